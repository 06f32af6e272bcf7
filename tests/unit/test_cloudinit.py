import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from rave.cloudinit import main, render, user_data
from tests.unit.conftest import SAMPLE_KEY

# Debian 12's cloud-init 22.4.2 schema (cloudinit/config/schemas/schema-cloud-config-v1.json)
SCHEMA = Path(__file__).parents[1] / "data" / "cloud-init-22.4.2-schema-cloud-config-v1.json"


def _validate(text: str) -> dict:
    assert text.startswith("#cloud-config\n")
    document = yaml.safe_load(text)
    jsonschema.validate(document, json.loads(SCHEMA.read_text()))
    return document


def test_user_data_validates_against_cloud_inits_schema():
    document = _validate(render(user_data("rave-prod-1", "agent", [SAMPLE_KEY])))
    (user,) = document["users"]
    assert user["ssh_authorized_keys"] == [SAMPLE_KEY]
    assert user["lock_passwd"] is True
    assert document["ssh_pwauth"] is False
    assert document["ssh_genkeytypes"] == ["ed25519"]


def test_schema_check_can_fail():
    document = user_data("rave-prod-1", "agent", [SAMPLE_KEY])
    document["ssh_genkeytypes"] = ["ed448"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, json.loads(SCHEMA.read_text()))


def test_cli_refuses_empty_keys_naming_file_and_field(tmp_path, capsys):
    group_data = tmp_path / "prod.py"
    group_data.write_text("operator_keys = []\n")
    assert main(["--group-data", str(group_data), "--hostname", "h1"]) == 2
    err = capsys.readouterr().err
    assert str(group_data) in err and "operator_keys" in err


def test_cli_prints_user_data(tmp_path, capsys):
    group_data = tmp_path / "prod.py"
    group_data.write_text(f"operator_keys = [{SAMPLE_KEY!r}]\n")
    assert main(["--group-data", str(group_data), "--hostname", "h1"]) == 0
    _validate(capsys.readouterr().out)
