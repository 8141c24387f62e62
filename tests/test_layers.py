"""The apps import one way: ``accounts`` ← ``usage`` ← ``notifications`` ← ``backoffice``.

An app may use the apps below it and never one above, so that each can be read, tested
and changed without the ones that build on it. ``config`` is split: the modules the apps
import (request ids, parsers, authentication, the Celery app...) lie below every app and
import none; the modules that assemble the project (settings, URLs, WSGI/ASGI) lie above
every app. Every module of these packages, migrations included, is parsed (not imported):
``import`` and ``from ... import`` anywhere in it (in functions, under ``TYPE_CHECKING``),
relative ones resolved, and the references a model or a migration makes by string
(``ForeignKey("usage.Extension")``, ``apps.get_model("usage", ...)``, a migration's
``dependencies``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
# Lowest first. An app may import its own modules and those of the apps before it.
APPS = ("accounts", "usage", "notifications", "backoffice")
# The ``config`` modules that assemble the project: above every app. Any other ``config``
# module is a foundation the apps import, below every app.
CONFIG_TOP = frozenset({"config.settings", "config.urls", "config.wsgi", "config.asgi"})
PACKAGES = ("config", *APPS)
MODEL_FIELDS = frozenset({"ForeignKey", "OneToOneField", "ManyToManyField"})


@dataclass(frozen=True, order=True)
class WrongImport:
    path: str
    line: int
    module: str
    target: str

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.line}: {self.module} ({layer_name(self.module)}) imports "
            f"{self.target} ({layer_name(self.target)}), a layer above its own"
        )


def layer(module: str) -> int | None:
    """The rank of ``module``'s layer (higher is above); ``None``: not ours (Django, DRF...)."""
    top = module.split(".")[0]
    if top == "config":
        is_top = any(module == m or module.startswith(f"{m}.") for m in CONFIG_TOP)
        return len(APPS) if is_top else -1
    return APPS.index(top) if top in APPS else None


def layer_name(module: str) -> str:
    rank = layer(module)
    if rank == -1:
        return "config base"
    if rank == len(APPS):
        return "config top"
    return str(module.split(".")[0])


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    """``from <level dots><name> import ...`` written in ``module``, made absolute."""
    if level == 0:
        return name or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _string_reference(node: ast.Call) -> Iterator[str]:
    """The apps named by string in a model field or ``apps.get_model`` call."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    values = []
    if called in MODEL_FIELDS:
        values = [*node.args[:1], *(k.value for k in node.keywords if k.arg == "to")]
    elif called == "get_model" and node.args:
        values = node.args[:1]
    for value in values:
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            yield value.value.split(".")[0]


def _dependencies(node: ast.Assign) -> Iterator[tuple[int, str]]:
    """The apps of a migration's ``dependencies = [("app", "0001_..."), ...]``."""
    if not any(isinstance(t, ast.Name) and t.id == "dependencies" for t in node.targets):
        return
    if not isinstance(node.value, ast.List | ast.Tuple):
        return
    for item in node.value.elts:
        if isinstance(item, ast.Tuple) and item.elts and isinstance(item.elts[0], ast.Constant):
            app = item.elts[0].value
            if isinstance(app, str):
                yield item.lineno, app


def references(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """Every ``(line, module)`` that ``source`` (the text of ``module``) imports or names."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.level, node.module)
            for alias in node.names:
                # ``from config import request_ids`` uses the module config.request_ids.
                yield node.lineno, f"{base}.{alias.name}" if base else alias.name
        elif isinstance(node, ast.Call):
            for app in _string_reference(node):
                yield node.lineno, app
        elif isinstance(node, ast.Assign):
            yield from _dependencies(node)


def wrong_imports(source: str, *, module: str, path: str, is_package: bool = False) -> list:
    """The references of ``module`` to a layer above its own, as ``WrongImport``."""
    own = layer(module)
    if own is None:
        return []
    found = []
    for line, target in references(source, module, is_package):
        rank = layer(target)
        if rank is not None and rank > own:
            found.append(WrongImport(path=path, line=line, module=module, target=target))
    return sorted(set(found))


def project_modules() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


# --- The project itself ----------------------------------------------------------------


def test_every_app_of_the_project_has_its_place_in_the_layers():
    # given: the project's own apps, in the order settings install them
    ours = [app for app in settings.INSTALLED_APPS if (ROOT / app / "apps.py").exists()]
    # then: each is a layer, and they are installed lowest first
    assert ours == list(APPS)


def test_no_module_imports_a_layer_above_its_own():
    # given: every module of config and of each app, migrations included
    modules = list(project_modules())
    assert {module_name(path).split(".")[0] for path in modules} == set(PACKAGES)
    # when
    found = [
        wrong
        for path in modules
        for wrong in wrong_imports(
            path.read_text(),
            module=module_name(path),
            path=str(path.relative_to(ROOT)),
            is_package=path.name == "__init__.py",
        )
    ]
    # then
    assert [str(wrong) for wrong in found] == []


# --- The checker, on modules written for it ----------------------------------------------

WRONG = """\
from typing import TYPE_CHECKING

from django.db import models

from accounts.models import Account
from config.request_ids import current_request_id
from notifications.services import crossings_record

if TYPE_CHECKING:
    from backoffice.admin import AccountAdmin


def later():
    import notifications.tasks
    from ..notifications import emails


class Extension(models.Model):
    notification = models.ForeignKey("notifications.Notification", on_delete=models.CASCADE)
    account = models.ForeignKey("accounts.Account", on_delete=models.CASCADE)


class Migration:
    dependencies = [("usage", "0001_initial"), ("notifications", "0001_initial")]
"""


def test_the_checker_names_each_import_of_a_layer_above_with_its_line():
    # when
    found = wrong_imports(WRONG, module="usage.models", path="usage/models.py")
    # then: imports at the top, under TYPE_CHECKING, in a function, relative, by string
    assert [str(wrong) for wrong in found] == [
        "usage/models.py:7: usage.models (usage) imports notifications.services.crossings_record"
        " (notifications), a layer above its own",
        "usage/models.py:10: usage.models (usage) imports backoffice.admin.AccountAdmin"
        " (backoffice), a layer above its own",
        "usage/models.py:14: usage.models (usage) imports notifications.tasks"
        " (notifications), a layer above its own",
        "usage/models.py:15: usage.models (usage) imports notifications.emails"
        " (notifications), a layer above its own",
        "usage/models.py:19: usage.models (usage) imports notifications"
        " (notifications), a layer above its own",
        "usage/models.py:24: usage.models (usage) imports notifications"
        " (notifications), a layer above its own",
    ]


def test_the_checker_lets_a_module_use_its_own_app_the_apps_below_and_config_below():
    # given
    source = (
        "from config import request_ids\n"
        "from accounts.models import Account\n"
        "from usage.selectors import usage_for\n"
        "from . import emails\n"
        "from .models import Notification\n"
    )
    # when / then
    assert wrong_imports(source, module="notifications.services", path="x.py") == []


def test_config_below_the_apps_may_use_none_of_them_and_config_above_may_use_all():
    # given
    source = "from accounts.models import Account\nfrom backoffice.api import urls\n"
    # when
    below = wrong_imports(source, module="config.request_ids", path="config/request_ids.py")
    above = wrong_imports(source, module="config.urls", path="config/urls.py")
    # then
    assert [str(wrong) for wrong in below] == [
        "config/request_ids.py:1: config.request_ids (config base) imports "
        "accounts.models.Account (accounts), a layer above its own",
        "config/request_ids.py:2: config.request_ids (config base) imports "
        "backoffice.api.urls (backoffice), a layer above its own",
    ]
    assert above == []


def test_no_app_may_use_the_config_modules_that_assemble_the_project():
    # given
    source = "from config.urls import urlpatterns\n"
    # when
    found = wrong_imports(source, module="backoffice.admin", path="backoffice/admin.py")
    # then
    assert [str(wrong) for wrong in found] == [
        "backoffice/admin.py:1: backoffice.admin (backoffice) imports "
        "config.urls.urlpatterns (config top), a layer above its own"
    ]
