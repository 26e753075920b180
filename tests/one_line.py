"""The check every test of a failing entry point makes: exactly one line on stderr, 'error: ...',
no traceback."""


def one_line_error(capsys, *parts: str) -> str:
    """The one line a failed demo or tool printed on stderr (read from pytest's ``capsys``), checked to
    start with 'error: ', hold no traceback and contain every one of ``parts``; returns it."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for part in parts:
        assert part in err, err
    return err
