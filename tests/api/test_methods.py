"""GET /v1/methods and /v1/backbones: the catalogue a client builds a pretrain spec from."""

from __future__ import annotations

import pytest

from ssl_core.methods import METHODS


def test_methods_list_every_registered_method_with_schema_and_backbones(client, auth):
    r = client.get("/v1/methods", headers=auth)
    assert r.status_code == 200
    data = {m["name"]: m for m in r.json()["data"]}
    assert sorted(data) == METHODS.names()
    simclr = data["simclr"]
    assert simclr["category"] == "contrastive"
    assert "Chen" in simclr["summary"]
    assert "vit_tiny" in simclr["backbones"]
    assert "resnet18" in simclr["backbones"]
    temperature = simclr["parameters"]["properties"]["temperature"]
    assert temperature["default"] == 0.2
    assert temperature["exclusiveMinimum"] == 0
    assert temperature["description"]
    assert simclr["defaults"]["optimizer"] == "lars"
    assert data["mae"]["defaults"]["adamw_betas"] == [0.9, 0.95]
    assert data["dino"]["defaults"]["weight_decay_end_factor"] == 10.0
    assert data["barlow_twins"]["defaults"]["no_decay_lr_scale"] == pytest.approx(0.024)
    assert simclr["defaults"]["no_decay_lr_scale"] == 1.0
    assert simclr["defaults"]["weight_decay_end_factor"] == 1.0
    assert client.get("/v1/methods/simclr", headers=auth).json() == simclr


def test_methods_list_their_defaults_for_each_backbone_family(client, auth):
    data = {m["name"]: m for m in client.get("/v1/methods", headers=auth).json()["data"]}
    for name, method in data.items():
        assert sorted(method["defaults_by_family"]) == sorted(METHODS.get(name).families), name
        # what a spec without a backbone trains with (ResNet-18), or for a ViT-only method, its ViT's
        primary = "resnet" if "resnet" in METHODS.get(name).families else "vit"
        assert method["defaults"] == method["defaults_by_family"][primary], name
    dino = data["dino"]["defaults_by_family"]
    recipe = {f: (d["optimizer"], d["learning_rate"], d["weight_decay"]) for f, d in dino.items()}
    assert recipe == {"vit": ("adamw", 5e-4, 0.04), "resnet": ("sgd", 0.12, 5e-4), "mobile": ("sgd", 0.12, 5e-4)}
    assert data["dino"]["defaults"] == dino["resnet"]
    assert data["mae"]["defaults"] == data["mae"]["defaults_by_family"]["vit"]
    simclr = data["simclr"]["defaults_by_family"]
    assert simclr["resnet"] == simclr["vit"]


def test_multitask_lists_the_defaults_its_default_tasks_train_with(client, auth):
    """Its default tasks are rotation then SimCLR: the first one's optimiser settings (SGD, lr 0.1, weight
    decay 5e-4), not those of the base class."""
    defaults = client.get("/v1/methods/multitask", headers=auth).json()["defaults"]
    assert defaults == client.get("/v1/methods/rotation", headers=auth).json()["defaults"]
    assert defaults["optimizer"] == "sgd"
    assert defaults["weight_decay"] == 5e-4


def test_unknown_method_is_404_and_the_catalogue_needs_a_key(client, auth):
    r = client.get("/v1/methods/nope", headers=auth)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/methods").status_code == 401


def test_backbones_name_their_family(client, auth):
    data = {b["name"]: b for b in client.get("/v1/backbones", headers=auth).json()["data"]}
    assert data["resnet50"]["family"] == "resnet"
    assert data["vit_small"]["family"] == "vit"
    assert data["vit_tiny"]["description"]


def test_backbones_give_parameters_and_flops_at_the_asked_size(client, auth):
    r = client.get("/v1/backbones", headers=auth, params={"image_size": 224})
    assert r.status_code == 200
    body = r.json()
    assert (body["image_size"], body["stem"]) == (224, "standard")
    data = {b["name"]: b for b in body["data"]}
    # torchvision's model cards: ResNet-18 1.81 and ResNet-50 4.09 GMACs at 224 px, 2 FLOPs each; their
    # parameters less the 1000-class head.
    assert data["resnet18"]["flops"] / 1e9 == pytest.approx(2 * 1.81, abs=0.02)
    assert data["resnet50"]["flops"] / 1e9 == pytest.approx(2 * 4.09, abs=0.03)
    assert data["resnet18"]["parameters"] == 11_689_512 - (512 * 1000 + 1000)
    assert data["resnet50"]["parameters"] == 25_557_032 - (2048 * 1000 + 1000)
    assert (data["resnet18"]["dim"], data["vit_tiny"]["dim"]) == (512, 192)
    small = {b["name"]: b for b in client.get("/v1/backbones", headers=auth).json()["data"]}  # 32 px
    assert small["resnet18"]["flops"] < data["resnet18"]["flops"] / 40
    assert small["resnet18"]["parameters"] == data["resnet18"]["parameters"]
    cifar = {b["name"]: b for b in client.get("/v1/backbones?stem=small", headers=auth).json()["data"]}
    assert cifar["resnet18"]["flops"] > 10 * small["resnet18"]["flops"]  # no stride-2 stem, no max-pool


@pytest.mark.parametrize(("query", "field"), [("image_size=7", "image_size"), ("stem=huge", "stem")])
def test_backbones_refuse_a_bad_size_or_stem(client, auth, query, field):
    r = client.get(f"/v1/backbones?{query}", headers=auth)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert field in str(r.json()["errors"])


def test_a_vit_that_cannot_take_the_size_has_no_costs(client, auth):
    data = {b["name"]: b for b in client.get("/v1/backbones?image_size=33", headers=auth).json()["data"]}
    assert data["vit_tiny"]["flops"] is None
    assert "must divide image_size 33" in data["vit_tiny"]["unavailable"]
    assert data["resnet18"]["flops"] > 0
