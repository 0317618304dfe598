import shutil
import subprocess
import sys

from mmssl.cli import main


def test_ls_lists_discovered_modalities_and_encoders(capsys) -> None:
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for name in ["image", "video", "audio", "depth", "semseg", "vit_base_patch16_224", "vit_tiny_patch16_224"]:
        assert name in out


def test_ls_encoders_all_lists_more(capsys) -> None:
    main(["ls", "encoders"])
    plain = capsys.readouterr().out.count("\n")
    main(["ls", "encoders", "--all"])
    assert capsys.readouterr().out.count("\n") > plain


def test_console_script_help() -> None:
    exe = shutil.which("mmssl") or None
    cmd = [exe, "--help"] if exe else [sys.executable, "-m", "mmssl", "--help"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "ls" in out and "usage: mmssl" in out


def test_video_eval_propagation_alias(tmp_path, capsys) -> None:
    assert main(["video", "eval", "propagation", "--data", str(tmp_path / "none"), "--task", "davis",
                 "--pixels"]) == 2
    assert "none" in capsys.readouterr().err
