"""Nothing written outside the output folder, no file the project did not write replaced, and prep
folders that refuse a re-run with other settings (utils/outputs.py, the demos' Runner, the
patch-preparation tools); see docs/reliability.md."""
import cv2
import numpy as np
import pytest

import demo_test_syn
from datasets import prepare_sisr_patches
from utils.errors import UserError
from utils.outputs import RECORD, folder_name, inside, record, refuse_foreign
from one_line import one_line_error as _error

SMALL = dict(n_feat=[8, 16], n_resblocks=1, dep_S=2)


def _png(path, h=24, w=28, seed=0):
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    return path


def _tree(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_inside_and_folder_name(tmp_path):
    assert inside(tmp_path, "a", "b.png") == tmp_path / "a" / "b.png"
    for parts in (("..", "x.png"), ("/etc/passwd",), ("a", "../../x.png")):
        with pytest.raises(UserError, match="outside the output folder"):
            inside(tmp_path, *parts)
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(UserError, match="outside"):
        inside(tmp_path, "link", "x.png")
    assert folder_name("Set14") == "Set14"
    assert folder_name("/abs/or/../Tiny") == "Tiny" and folder_name("../x/Set5/") == "Set5"


def test_record_refuses_foreign_files_only(tmp_path):
    mine, theirs = tmp_path / "a.png", tmp_path / "b.png"
    mine.write_bytes(b"1")
    record(tmp_path, [mine, tmp_path / "never_written.png"])
    assert (tmp_path / RECORD).read_text().split() == ["[", '"a.png"', "]"]  # only what exists is recorded
    refuse_foreign(tmp_path, [mine, tmp_path / "new.png"])
    theirs.write_bytes(b"2")
    with pytest.raises(UserError, match="b.png exists and was not written by this project.*--overwrite"):
        refuse_foreign(tmp_path, [mine, theirs])
    refuse_foreign(tmp_path, [theirs], overwrite=True)


def test_demo_keeps_an_unrelated_file_and_replaces_its_own(tmp_path, small_checkpoint, capsys):
    ckpt = small_checkpoint("denoising-syn", **SMALL)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    _png(src / "a.png")
    (out / "a_noise_std.png").write_bytes(b"the user's own file")
    run = ["--ckpt_path", str(ckpt), "--device", "cpu", "-i", str(src), "-o", str(out)]
    assert demo_test_syn.main(run) == 1
    _error(capsys, f"{out / 'a_noise_std.png'} exists and was not written by this project")
    assert (out / "a_noise_std.png").read_bytes() == b"the user's own file" and not (out / "a.png").exists()
    assert demo_test_syn.main(run + ["--overwrite"]) == 0
    assert cv2.imread(str(out / "a_noise_std.png")) is not None
    capsys.readouterr()
    assert demo_test_syn.main(run) == 0  # its own outputs, recorded, are replaced without --overwrite


def test_protocol_with_a_path_as_dataset_writes_inside_out(tmp_path, small_checkpoint, capsys):
    ckpt = small_checkpoint("denoising-syn", **SMALL)
    tiny = tmp_path / "data" / "Tiny"
    tiny.mkdir(parents=True)
    (tmp_path / "or").mkdir()
    _png(tiny / "x.png", 16, 16)
    before = _tree(tmp_path / "data")
    out = tmp_path / "out"
    assert demo_test_syn.main(["--ckpt_path", str(ckpt), "--device", "cpu", "--protocol", "iid",
                               "--data_root", str(tmp_path), "--datasets", str(tmp_path / "or" / ".." / "data" / "Tiny"),
                               "-o", str(out), "--save_images"]) == 0
    assert _tree(tmp_path / "data") == before  # nothing written into the test set
    saved = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert saved == [f"virnet_denoising_iid_images/Tiny/sigma{s}/x.png" for s in (15, 25, 50)]
    assert '"Tiny"' in (out / "virnet_denoising_iid.json").read_text()


def test_patch_prefix_cannot_lead_outside(tmp_path, capsys):
    hr = tmp_path / "hr"
    hr.mkdir()
    _png(hr / "a.png", 40, 40)
    with pytest.raises(SystemExit) as stop:
        prepare_sisr_patches.main(["--in_dirs", str(hr), "--prefixes", "../../x", "--out_dir", str(tmp_path / "o"),
                                   "--pch_size", "32"])
    assert stop.value.code == 2 and "must not be empty, start with '.' or hold '/'" in capsys.readouterr().err
    assert _tree(tmp_path) == ["hr", "hr/a.png"]


def test_patch_folder_refuses_other_settings(tmp_path, capsys):
    hr, out = tmp_path / "hr", tmp_path / "out"
    hr.mkdir()
    _png(hr / "a.png", 40, 40)
    cut = ["--in_dirs", str(hr), "--out_dir", str(out), "--workers", "1", "--stride", "8"]
    assert prepare_sisr_patches.main(cut + ["--pch_size", "32"]) == 0
    patches = _tree(out)
    capsys.readouterr()
    assert prepare_sisr_patches.main(cut + ["--pch_size", "16"]) == 1
    err = capsys.readouterr().err
    assert err == f"prepare_sisr_patches: error: {out} holds patches made with other settings (--pch_size 32 -> 16); " \
                  f"run with the settings of {out / prepare_sisr_patches.SETTINGS_FILE}, choose another --out_dir, " \
                  "or empty it\n"
    assert _tree(out) == patches
    (out / prepare_sisr_patches.SETTINGS_FILE).unlink()
    assert prepare_sisr_patches.main(cut + ["--pch_size", "32"]) == 1
    assert "holds patches but no record of their settings" in capsys.readouterr().err


def test_dnd_folder_of_the_user_is_kept_and_our_own_is_rerun(tmp_path, small_checkpoint, capsys):
    from real_fixtures import write_dnd

    import demo_test_denoising_real

    ckpt = small_checkpoint("denoising-real", n_feat=[8, 16], n_resblocks=1, dep_S=2)
    write_dnd(tmp_path, [np.array([[1, 1, 16, 16]])], [(24, 20)])
    out = tmp_path / "out"
    (out / "dnd_noflip").mkdir(parents=True)
    run = ["--ckpt_path", str(ckpt), "--device", "cpu", "--dnd", str(tmp_path), "-o", str(out)]
    assert demo_test_denoising_real.main(run) == 1
    _error(capsys, f"{out / 'dnd_noflip'} exists and was not written by this project")
    assert list((out / "dnd_noflip").iterdir()) == []
    assert demo_test_denoising_real.main(run + ["--overwrite"]) == 0
    assert demo_test_denoising_real.main(run) == 0  # recorded: a re-run replaces its own boxes
    assert (out / "dnd_noflip" / "summary.json").is_file()
