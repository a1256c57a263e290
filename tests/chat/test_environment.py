"""Every environment variable the service reads is documented: in `unbroken chat --help`
and in the README's table, and each one sets the field it says it sets."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import httpx
import pytest

from unbroken.chat.environment import VARIABLES
from unbroken.chat.settings import Settings
from unbroken.cli import _parser

README = Path(__file__).resolve().parents[2] / "README.md"
#: Settings that no variable sets: where the page's files are, whether the app migrates
#: (the CLI migrates before forking), how long a finished answer is replayed.
NOT_FROM_THE_ENVIRONMENT = {"static_dir", "migrate_on_start", "resume_window"}


class Recording(dict[str, str]):
    """An environment that remembers every variable asked for."""

    def __init__(self, *args: object, **kwargs: str) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return super().__contains__(key)


def read_variables() -> set[str]:
    env = Recording()
    Settings.from_env(env)
    return env.asked


def test_the_list_is_what_settings_read() -> None:
    listed = [variable.name for variable in VARIABLES]
    assert len(listed) == len(set(listed))
    assert set(listed) == read_variables()
    fields = {field.name for field in dataclasses.fields(Settings)}
    assert {variable.field for variable in VARIABLES} == fields - NOT_FROM_THE_ENVIRONMENT


@pytest.mark.parametrize("variable", VARIABLES, ids=lambda variable: variable.name)
def test_each_variable_sets_its_field(variable: object) -> None:
    assert isinstance(variable, type(VARIABLES[0]))
    env = {variable.name: variable.example}
    if variable.name == "UNBROKEN_MODEL":
        env["ANTHROPIC_API_KEY"] = "sk-ant-example"
    default = getattr(Settings.from_env({}), variable.field)
    assert getattr(Settings.from_env(env), variable.field) != default


def test_help_lists_every_variable() -> None:
    chat = _parser()._subparsers._group_actions[0].choices["chat"]  # type: ignore[union-attr]
    text = chat.format_help()
    for variable in VARIABLES:
        assert re.search(rf"^  {variable.name}$", text, re.M), variable.name


def test_readme_table_lists_every_variable() -> None:
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row)}
    missing = {variable.name for variable in VARIABLES} - documented
    assert not missing, f"not in the README's table: {sorted(missing)}"


@pytest.mark.anyio
async def test_metrics_can_require_a_token(tmp_path: Path) -> None:
    from unbroken.chat.app import create_app

    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
        metrics_token="scrape-token-0123456789",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "x"}):
                response = await client.get("/metrics", headers=headers)
                assert response.status_code == 401
                assert response.json()["error"]["code"] == "unauthorized"
                assert response.headers["www-authenticate"] == "Bearer"
            good = {"Authorization": "Bearer scrape-token-0123456789"}
            response = await client.get("/metrics", headers=good)
            assert response.status_code == 200
            assert "unbroken_chat_active_streams" in response.text
