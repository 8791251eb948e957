"""The offline quick start as the docs write it: the config they show is the one
`falhook emulate --print-config` prints, and the clip they submit is one
`falhook emulate --sample-clip` writes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from falhook.cli import main
from falhook.config import settings_from_dict
from falhook.fal.cli import emulator_config
from falhook.fal.ray import mp4_duration
from falhook.fal.sample_media import sample_clip
from tests.support.paths import ROOT

DEFAULT_EMULATOR = "http://127.0.0.1:8001"


def toml_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)


def run(capfd: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capfd.readouterr()
    return code, out, err


@pytest.mark.parametrize("doc", ["docs/submit.md", "README.md"])
def test_the_docs_quick_start_config_is_what_print_config_prints(doc: str) -> None:
    blocks = toml_blocks((ROOT / doc).read_text(encoding="utf-8"))
    assert emulator_config(DEFAULT_EMULATOR) in blocks


def test_print_config_prints_it_and_exits(capfd: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capfd, "emulate", "--print-config")
    assert code == 0 and out == emulator_config(DEFAULT_EMULATOR)
    code, out, _ = run(capfd, "emulate", "--print-config", "--port", "9001", "--tls")
    assert code == 0 and 'queue_url = "https://127.0.0.1:9001"' in out


def test_the_printed_config_is_a_working_config(tmp_path: Path) -> None:
    settings = settings_from_dict(
        tomllib.loads(emulator_config(DEFAULT_EMULATOR)), base_dir=tmp_path
    )
    assert settings.receiver.queue_url == DEFAULT_EMULATOR
    assert settings.downloads.allow_private_hosts is True
    assert settings.downloads.fal_media_hosts == ("127.0.0.1",)  # its private files too
    assert settings.routes["reframe"].sinks == ("local",)


def test_sample_clip_writes_a_clip_and_never_overwrites_another_file(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    clip = tmp_path / "clip.mp4"
    code, out, err = run(capfd, "emulate", "--sample-clip", str(clip), "--print-config")
    assert code == 0 and "wrote a 5 s H.264 sample clip" in err and out.startswith("#")
    assert clip.read_bytes() == sample_clip() and mp4_duration(clip) == 5.0
    code, _, _ = run(capfd, "emulate", "--sample-clip", str(clip), "--print-config")
    assert code == 0  # the same clip again: fine
    clip.write_bytes(b"my own video")
    code, _, err = run(capfd, "emulate", "--sample-clip", str(clip), "--print-config")
    assert code == 2 and "a different file is there already" in err
    assert clip.read_bytes() == b"my own video"


def test_every_option_in_the_readme_command_table_exists() -> None:
    """The table stays true: each `--option` it shows for a command is one of its options."""
    from falhook.cli import build_parser

    parser = build_parser()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Command line", 1)[1].split("\n\n", 2)[1]
    rows = re.findall(r"^\| `falhook ([^`]+)` \|", table, re.MULTILINE)
    assert len(rows) >= 10
    for row in rows:
        words = row.split()
        command = [w for w in words if re.fullmatch(r"[a-z]+", w)][:2]
        sub = parser
        for name in command:
            choices = next(a.choices for a in sub._actions if hasattr(a, "choices") and a.choices
                           and isinstance(a.choices, dict))  # fmt: skip
            if name not in choices:
                break
            sub = choices[name]
        known = {o for a in sub._actions for o in a.option_strings}
        for option in re.findall(r"--[a-z][a-z-]*", row):
            assert option in known, (row, option)
