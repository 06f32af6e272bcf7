"""Every template renders with StrictUndefined from a validated model, in both modes."""

import importlib
import pkgutil

import pytest

import tasks
from rave.render import all_templates, render
from tests.unit.conftest import make_settings


def _task_modules():
    return [
        importlib.import_module(f"tasks.{info.name}")
        for info in pkgutil.iter_modules(tasks.__path__)
    ]


def _contexts(config):
    contexts = {}
    for module in _task_modules():
        if hasattr(module, "templates"):
            contexts.update(module.templates(config))
    return contexts


@pytest.mark.parametrize("mode", ["SAFE", "FULL_PIPE"])
def test_every_template_is_rendered_by_some_task(mode):
    config = make_settings(rave_mode=mode, egress_proxy="http://10.0.0.1:3128")
    contexts = _contexts(config)
    assert set(all_templates()) == set(contexts), "templates without a task (or vice versa)"
    for name, context in contexts.items():
        assert render(name, **context).strip(), f"{name} rendered empty"
