from pathlib import Path

import pytest

from lettingo_dagster.settings import (
    PresetError,
    available_presets,
    describe_settings,
    load_preset,
)


def test_shipped_presets_load_and_differ() -> None:
    assert {"ci", "default"} <= set(available_presets())
    ci, default = load_preset("ci"), load_preset("default")
    assert default.data.datasets == ["movielens-100k"]
    assert (default.task.recent_window, default.task.long_window) == (10, 30)
    assert ci.task.split.max_users_per_split is not None
    assert ci.task.min_interactions < default.task.min_interactions
    for name in available_presets():  # every shipped preset is valid as written
        assert load_preset(name).name == name


def test_every_setting_has_a_description() -> None:
    rows = describe_settings()
    assert len(rows) > 10
    missing = [key for key, _default, description in rows if not description.strip()]
    assert missing == []


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "p.yaml").write_text(text, encoding="utf-8")
    return tmp_path


def test_unknown_key_is_named(tmp_path: Path) -> None:
    folder = _write(tmp_path, "task:\n  recnt_window: 5\n")
    with pytest.raises(PresetError, match=r"task\.recnt_window: unknown setting"):
        load_preset("p", folder)


def test_bad_value_names_key_and_value(tmp_path: Path) -> None:
    folder = _write(tmp_path, "task:\n  split:\n    test_fraction: 1.5\n")
    with pytest.raises(PresetError) as info:
        load_preset("p", folder)
    message = str(info.value)
    assert "task.split.test_fraction" in message and "1.5" in message and "p.yaml" in message


def test_wrong_type_is_named(tmp_path: Path) -> None:
    folder = _write(tmp_path, "task:\n  recent_window: ten\n")
    with pytest.raises(PresetError, match=r"task\.recent_window: .*'ten'"):
        load_preset("p", folder)


def test_cross_field_rules(tmp_path: Path) -> None:
    folder = _write(tmp_path, "task:\n  like_threshold: 2\n  dislike_threshold: 3\n")
    with pytest.raises(PresetError, match="dislike_threshold must be below like_threshold"):
        load_preset("p", folder)


def test_missing_preset_lists_known(tmp_path: Path) -> None:
    folder = _write(tmp_path, "{}\n")
    with pytest.raises(PresetError, match=r"no such preset 'nope' \(available: p\)"):
        load_preset("nope", folder)


def test_invalid_yaml(tmp_path: Path) -> None:
    folder = _write(tmp_path, "task: [unclosed\n")
    with pytest.raises(PresetError, match="not valid YAML"):
        load_preset("p", folder)


def test_code_defaults_are_the_default_preset() -> None:
    """One source for each setting: what the code assumes is what `default` ships (the dataset
    list aside, which only a preset can name)."""
    shipped = load_preset("default")
    from lettingo_dagster.settings import Preset

    code = Preset(name="default", description=shipped.description, data=shipped.data)
    assert code == shipped


def test_readme_reference_lists_every_setting() -> None:
    """The README's configuration reference names every setting, so it cannot go stale."""
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    reference = readme[readme.index("## Configuration reference") :]
    missing = []
    for key, _default, _description in describe_settings():
        top, _, rest = key.partition(".")
        if top in ("name", "description"):
            continue
        section = reference[reference.index(f"### {top}\n") :]
        if f"| `{rest or top}` |" not in section:
            missing.append(key)
    assert missing == []


def test_model_paths_expand_lettingo_home_and_refuse_unset_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lettingo_dagster.settings import ExplorerSettings

    monkeypatch.setenv("LETTINGO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LETTINGO_NOT_SET", raising=False)
    for written in ("$LETTINGO_HOME/models/m", "${LETTINGO_HOME}/models/m"):
        explorer = ExplorerSettings(name="m", kind="local", path=written)
        assert explorer.model_path() == str(tmp_path / "home" / "models" / "m")
    monkeypatch.delenv("LETTINGO_HOME")
    default = ExplorerSettings(name="m", kind="local", path="$LETTINGO_HOME/m").model_path()
    assert default == str(Path(".lettingo").resolve() / "m")  # the default home
    broken = ExplorerSettings(name="m", kind="local", path="$LETTINGO_NOT_SET/m")
    with pytest.raises(ValueError, match=r"explorer 'm': path .* names \$LETTINGO_NOT_SET"):
        broken.model_path()
