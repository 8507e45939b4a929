from __future__ import annotations

from pathlib import Path

import pytest

from svirtd.config import Config, load_config
from svirtd.errors import ConfigError
from svirtd.models import Level, ResourceClass
from svirtd.policy import LabelSpec


def test_label_spec_from_context_files() -> None:
    spec = LabelSpec.from_context_files("system_u:system_r:svirt_t:s0\nsystem_u:system_r:svirt_tcg_t:s0\n",
                                        "system_u:object_r:svirt_image_t:s0\nsystem_u:object_r:virt_content_t:s0\n")
    lv = Level(low=3, high=7)
    assert str(spec.process_label(lv)) == "system_u:system_r:svirt_t:s0:c3,c7"
    assert str(spec.process_label(lv, tcg=True)) == "system_u:system_r:svirt_tcg_t:s0:c3,c7"
    assert str(spec.label_for(ResourceClass.PRIVATE, lv)) == "system_u:object_r:svirt_image_t:s0:c3,c7"
    assert str(spec.label_for(ResourceClass.SHARED, lv)) == "system_u:object_r:svirt_image_t:s0"
    assert str(spec.label_for(ResourceClass.READONLY, lv)) == "system_u:object_r:virt_content_t:s0"
    assert spec.label_for(ResourceClass.UNHANDLED, lv) is None


def test_label_spec_from_the_installed_policy() -> None:
    """The host's own virtual context files (selinux-policy-default) parse; no svirt_tcg_t there."""
    import selinux

    spec = LabelSpec.from_context_files(Path(selinux.selinux_virtual_domain_context_path()).read_text(),
                                        Path(selinux.selinux_virtual_image_context_path()).read_text())
    assert spec.process.type == "svirt_t" and spec.image.type == "svirt_image_t"
    assert spec.content.type == "virt_content_t"


def test_label_spec_needs_content_line() -> None:
    with pytest.raises(ValueError, match="two lines"):
        LabelSpec.from_context_files("system_u:system_r:svirt_t:s0", "system_u:object_r:svirt_image_t:s0")


def test_config_defaults_are_safe() -> None:
    c = Config()
    assert c.default_confined and not c.require_confined
    assert len(c.category_set) == 1024 and not c.reserved_set
    assert c.database_path == Path("/var/lib/svirtd/state.db")


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    f = tmp_path / "svirtd.conf"
    f.write_text('categories = "c0.c1"\nreserved_categories = "c1"\n')
    with pytest.raises(ConfigError, match="at least two categories"):
        load_config(f)
    f.write_text('categoriez = "c0.c9"\n')
    with pytest.raises(ConfigError, match="categoriez"):
        load_config(f)
    f.write_text('categories = "c0.c2000"\n')
    with pytest.raises(ConfigError, match="categories"):
        load_config(f)
    f.write_text("categories = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.conf")


def test_config_file_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "svirtd.conf"
    f.write_text('categories = "c0.c9"\nreserved_categories = "c0"\ndefault_confined = false\n')
    c = load_config(f, {"state_dir": tmp_path / "state", "bus_address": None})
    assert c.state_dir == tmp_path / "state" and c.bus_address == ""
    assert len(c.category_set - c.reserved_set) == 9 and not c.default_confined
