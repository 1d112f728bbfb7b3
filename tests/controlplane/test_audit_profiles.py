"""The baseline profile a registration derives from its train dataset is stored as a blob, and
that blob's record is audited like an upload's: one StoreProfile event, by the registrant."""

from __future__ import annotations

from modelplane import Client
from tests.controlplane.conftest import TrainedModel


def test_a_registration_audits_the_profile_blob_it_stores(
    client: Client, trained_model: TrainedModel
) -> None:
    for model in ("a", "b"):
        client.create_model(model)
    v = client.register_version(
        "a", trained_model.onnx, datasets={"train": trained_model.train}, label="target"
    )
    profile = f"blobs/{v.baseline.sha256}"
    events = [e for e in client.audit_events() if e.resource == profile]
    assert [(e.action, e.actor) for e in events] == [("StoreProfile", "alice")]
    assert events[0].after_sha256 and not events[0].before_sha256
    # Registered first, the profile comes before the version in the chain.
    actions = [(e.action, e.resource) for e in client.audit_events()]
    assert actions.index(("StoreProfile", profile)) + 1 == actions.index(
        ("CreateModelVersion", v.name)
    )
    # The same train dataset makes the same profile: stored once, audited once.
    with Client(client.address, principal="bob", timeout=30) as bob:
        again = bob.register_version(
            "b", trained_model.onnx, datasets={"train": trained_model.train}, label="target"
        )
    assert again.baseline.sha256 == v.baseline.sha256
    assert [e.action for e in client.audit_events(resource=profile)] == ["StoreProfile"]
    assert client.get_blob(v.baseline.sha256).created_by == "alice"
    assert client.verify_audit().ok
