"""svirtctl's pure parts: the exit-code table, table layout, the command line."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from svirtd import __version__
from svirtd.ctl import parser
from svirtd.ctl_exit import ERROR_EXIT, ExitCode, exit_code
from svirtd.ctl_output import list_lines, status_lines, table
from svirtd.dbus_errors import ERROR_NAMES, INTERNAL_ERROR
from svirtd.profiles import PROFILES
from tests.completion import complete

MAN = Path(__file__).resolve().parents[2] / "man" / "svirtctl.1.scd"


def test_every_error_svirtd_returns_has_its_own_exit_code() -> None:
    names = set(ERROR_NAMES.values())
    assert names <= set(ERROR_EXIT)
    codes = [ERROR_EXIT[n] for n in names]
    assert len(set(codes)) == len(codes)  # distinct: a script can tell every svirtd error apart
    assert ExitCode.FAILURE not in codes and ExitCode.VIOLATED not in codes
    assert exit_code(INTERNAL_ERROR) is ExitCode.FAILURE
    assert exit_code("org.example.Unheard.Of") is ExitCode.FAILURE


def test_exit_codes_keep_their_documented_numbers() -> None:
    assert [int(c) for c in ExitCode] == list(range(20))
    assert (ExitCode.USAGE, ExitCode.VIOLATED, ExitCode.NO_SUCH_GUEST, ExitCode.NOT_RUNNING) == (2, 3, 4, 7)
    assert exit_code("org.freedesktop.DBus.Error.AccessDenied") is ExitCode.ACCESS_DENIED
    assert exit_code("org.freedesktop.DBus.Error.ServiceUnknown") is ExitCode.NOT_RUNNING
    assert exit_code("org.svirt.Manager1.Error.LabelSpaceExhausted") is ExitCode.LABEL_SPACE_FULL


def test_the_man_page_documents_every_exit_code() -> None:
    text = MAN.read_text()
    section = text.split("# EXIT STATUS", 1)[1].split("\n# ", 1)[0]
    documented = {int(n) for n in re.findall(r"^\|\s+(\d+)\s*$", section, re.MULTILINE)}
    assert documented == {int(c) for c in ExitCode}


def test_columns_are_as_wide_as_their_widest_cell() -> None:
    rows = [("a", "x" * 30, "s0:c1,c2"), ("bb", "y", "s0:c100,c200")]
    lines = table(rows, ("ID", "NAME", "LEVEL"))
    assert lines == [
        "ID  NAME" + " " * 28 + "LEVEL",
        "a   " + "x" * 30 + "  s0:c1,c2",
        "bb  y" + " " * 31 + "s0:c100,c200",
    ]
    assert table([]) == [] and table([], ("A", "B")) == ["A  B"]


def test_list_legend_and_no_legend() -> None:
    rows = [("u1", "web01", "s0:c1,c2", "default", "running")]
    assert list_lines(rows, legend=True)[0].split() == ["UUID", "NAME", "LEVEL", "PROFILE", "STATE"]
    assert list_lines(rows, legend=True)[-1] == "1 guest listed."
    assert list_lines(rows, legend=False) == ["u1  web01  s0:c1,c2  default  running"]
    assert list_lines([], legend=True) == ["No guests isolated."] and list_lines([], legend=False) == []


def test_status_aligns_values() -> None:
    lines = status_lines({"Version": "0.1.0", "CategoriesFree": 10, "Enforcing": False})
    assert lines == ["CategoriesFree:  10", "Enforcing:       no", "Version:         0.1.0"]


@pytest.mark.parametrize("argv", [
    ["--json", "query", "web01"], ["query", "web01", "--json"], ["query", "--json", "web01"],
])
def test_options_before_or_after_the_command(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    assert (args.command, args.guest, args.json, args.no_legend) == ("query", "web01", True, False)


def test_an_option_given_before_the_command_is_kept() -> None:
    args = parser().parse_args(["--no-legend", "--bus-address", "unix:path=/x", "list"])
    assert (args.no_legend, args.bus_address, args.json, args.no_ask_password) == (True, "unix:path=/x", False, False)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"svirtctl {__version__}\n"


def test_the_man_page_builds() -> None:
    if shutil.which("scdoc") is None:
        pytest.skip("scdoc is not installed (apt-get install scdoc)")
    out = subprocess.run(["scdoc"], input=MAN.read_bytes(), capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert b".SH EXIT STATUS" in out.stdout and b".SH SEE ALSO" in out.stdout


def test_completion_offers_the_commands_options_and_profiles() -> None:
    commands = set(next(a for a in parser()._actions if a.dest == "command").choices or ())
    assert set(complete("svirtctl ")) == commands
    assert set(complete("svirtctl --json --no-legend ")) == commands
    assert complete("svirtctl is") == ["isolate"]
    assert set(complete("svirtctl list --no-")) == {"--no-legend", "--no-ask-password", "--no-progress"}
    assert set(complete("svirtctl --timeout 5 ")) == commands
    assert "--profile" in complete("svirtctl isolate web01 --") and "--profile" not in complete("svirtctl list --")
    assert set(complete("svirtctl isolate web01 --profile ")) == set(PROFILES)
    assert complete("svirtctl --bus-address unix:path=/run/x st") == ["status"]


def test_completion_of_guests_gives_up_quickly_without_svirtd(tmp_path: Path) -> None:
    started = time.monotonic()
    assert complete("svirtctl query ", env={"SVIRT_BUS_ADDRESS": f"unix:path={tmp_path}/none"}) == []
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "nan"])
def test_a_timeout_must_be_seconds_above_zero(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parser().parse_args(["--timeout", bad, "list"])
    assert exc.value.code == 2 and "is not a number of seconds above 0" in capsys.readouterr().err
    assert parser().parse_args(["list", "--timeout", "2.5"]).timeout == 2.5
