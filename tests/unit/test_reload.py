"""What a reload applies, and what waits for a restart (pure)."""

from __future__ import annotations

from pathlib import Path

from svirtd.config import Config
from svirtd.reload import RELOADABLE, plan_reload


def test_reloadable_options_are_applied_and_the_others_kept_until_a_restart() -> None:
    running = Config()
    wanted = Config(require_confined=True, auto_confine_names=("web*",), state_dir=Path("/srv/elsewhere"),
                    categories="c0.c99", log_level="debug")
    plan = plan_reload(running, wanted)
    assert set(plan.applied) == {"require_confined", "auto_confine_names", "log_level"}
    assert set(plan.need_restart) == {"state_dir", "categories"}
    assert plan.config.require_confined and plan.config.auto_confine_names == ("web*",)
    assert plan.config.state_dir == running.state_dir and plan.config.categories == running.categories
    assert plan.reconfine
    assert "state_dir" in plan.describe() and "systemctl restart svirtd" in plan.describe()


def test_an_unchanged_file_changes_nothing() -> None:
    plan = plan_reload(Config(), Config())
    assert plan.applied == () and plan.need_restart == () and not plan.reconfine
    assert plan.describe() == "nothing changed"


def test_every_reloadable_name_is_an_option() -> None:
    assert set(RELOADABLE) <= set(Config.model_fields)


def test_svirtd_8_lists_exactly_what_a_reload_applies() -> None:
    import re

    page = (Path(__file__).resolve().parents[2] / "man" / "svirtd.8.scd").read_text()
    sighup = page.split("*SIGHUP*", 1)[1].split("Every other option", 1)[0]
    named = {n for n in re.findall(r"\*([a-z_]+)\*", sighup) if n in Config.model_fields}
    assert named == set(RELOADABLE)
