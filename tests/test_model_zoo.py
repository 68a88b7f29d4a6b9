"""Model zoo: catalog lookups, URLs, configs and the PathManager cache (nothing downloads)."""

import os

import pytest

from glip_d2 import model_zoo
from glip_d2.model_zoo.model_zoo import OFFICIAL_URL_PREFIX


def test_catalog_names_files_and_numbers():
    assert list(model_zoo.MODELS) == ["GLIP-T_A", "GLIP-T_B", "GLIP-T_C", "GLIP-T", "GLIP-L"]
    assert model_zoo.get_checkpoint_url("GLIP-T") == (
        OFFICIAL_URL_PREFIX + "glip_tiny_model_o365_goldg_cc_sbu.pth"
    )
    assert model_zoo.get_checkpoint_url("GLIP-T (A)").endswith("/glip_a_tiny_o365.pth")
    assert model_zoo.MODELS["GLIP-L"].filename == "glip_large_model.pth"
    assert model_zoo.MODELS["GLIP-L"].hf_url == (
        "https://huggingface.co/GLIPModel/GLIP/resolve/main/glip_large_model.pth"
    )
    t = model_zoo.MODELS["GLIP-T"]
    assert (t.coco_zero_shot, t.coco_finetuned, t.lvis_minival_last, t.lvis_minival_best) == (
        46.6,
        55.2,
        17.6,
        20.1,
    )
    assert model_zoo.MODELS["GLIP-T_A"].config_file == "GLIP-T_A.yaml"
    assert model_zoo.MODELS["GLIP-T_C"].config_file == "GLIP-T.yaml"


def test_unknown_name_is_an_error_listing_known_ones():
    with pytest.raises(KeyError, match="GLIP-XL.*known: GLIP-T_A"):
        model_zoo.get_checkpoint_url("GLIP-XL")


@pytest.mark.parametrize("name", ["GLIP-T_A", "GLIP-T", "GLIP-L"])
def test_config_files_and_trained_config(name):
    path = model_zoo.get_config_file(name)
    assert os.path.isfile(path) and path.endswith(model_zoo.MODELS[name].config_file)
    cfg = model_zoo.get_config(name, trained=True)
    assert cfg.MODEL.WEIGHTS == model_zoo.get_checkpoint_url(name)
    assert cfg.MODEL.LANGUAGE_BACKBONE.WEIGHTS_FROM_CHECKPOINT
    assert cfg.MODEL.GLIP.EARLY_FUSE == (name != "GLIP-T_A")
    assert cfg.MODEL.GLIP.NUM_LAYERS == (8 if name == "GLIP-L" else 6)
    untrained = model_zoo.get_config(name)
    assert untrained.MODEL.WEIGHTS != cfg.MODEL.WEIGHTS


def test_cached_download_is_used(tmp_path, monkeypatch):
    """A file already in Detectron2's PathManager cache is used without any download."""
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    cached = tmp_path / "data/GLIPv1_Open/models/glip_tiny_model_o365.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cached")
    assert model_zoo.get_checkpoint_path("GLIP-T_B") == str(cached)


def test_local_weights_folder_wins(tmp_path, monkeypatch):
    (tmp_path / "glip_large_model.pth").write_bytes(b"x")
    monkeypatch.setenv("GLIP_D2_WEIGHTS", str(tmp_path))
    assert model_zoo.get_checkpoint_path("GLIP-L") == str(tmp_path / "glip_large_model.pth")
