"""How the functions' database connections are secured: verified against a CA bundle when
cdk.json names one, encrypted only (with a synth warning) when it does not, and a bundle that
cannot be used stops the synth instead of deploying something weaker than asked for."""

from __future__ import annotations

import ssl
from pathlib import Path

import aws_cdk as cdk
import pytest

from covenant.db import ConnectionSpec
from stacks.layers import SharedLayers, build_ca_layer, warn_if_database_unverified
from stacks.settings import DATABASE_CA_FILE, SettingsError, _ca_bundle

from .conftest import make_ca_bundle


def test_a_bundle_makes_every_connection_verify_the_server(ca_bundle: Path) -> None:
    layer = build_ca_layer(ca_bundle)
    placed = layer / Path(DATABASE_CA_FILE).relative_to("/opt")
    assert placed.read_bytes() == ca_bundle.read_bytes()
    url = f"postgresql://covenant_graphql@db.example:5432/covenant?sslmode=verify-full&sslrootcert={placed}&auth=iam"
    context = ConnectionSpec.from_url(url).ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "Covenant Test RDS CA"),),)
    ]


def _warnings(artifacts) -> list[str]:
    return [
        str(message.entry.data)
        for artifact in artifacts
        for message in artifact.messages
        if message.level == cdk.cx_api.SynthesisMessageLevel.WARNING
    ]


def test_without_a_bundle_the_synth_warns_once_that_the_server_is_not_verified() -> None:
    app = cdk.App()
    stack = cdk.Stack(app, "Data")
    layers = SharedLayers(stack, "Layers", ca_bundle=None)
    assert len(layers.layers) == 2  # no CA layer
    warn_if_database_unverified(stack, None)
    [warning] = _warnings(app.synth().stacks)
    assert "not verified" in warning and "caBundle" in warning


def test_the_synthesized_app_with_a_bundle_has_no_such_warning(stacks) -> None:
    assert not [w for w in _warnings(stacks.values()) if "caBundle" in w]


def test_a_bundle_path_that_is_missing_or_not_pem_stops_the_synth(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot be read"):
        _ca_bundle(str(tmp_path / "absent.pem"))
    (tmp_path / "key.txt").write_text("not a certificate\n")
    with pytest.raises(SettingsError, match="no PEM certificate"):
        _ca_bundle(str(tmp_path / "key.txt"))
    assert _ca_bundle(None) is None and _ca_bundle("") is None
    good = make_ca_bundle(tmp_path / "ca.pem")
    assert _ca_bundle(str(good)) == good
