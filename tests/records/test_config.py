"""OutputConfig validation and its Hydra preset."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from synth.records.config import OutputConfig, Overwrite
from synth.records.schema import OPTIONAL_MEMBERS

PRESET = Path(__file__).resolve().parents[2] / "synth" / "conf" / "output" / "default.yaml"


def test_preset_composes_to_the_defaults() -> None:
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(OutputConfig), OmegaConf.load(PRESET)))
    assert cfg == OutputConfig()
    assert cfg.members == list(OPTIONAL_MEMBERS) and cfg.overwrite is Overwrite.RESUME


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"samples_per_shard": 0}, r"output\.samples_per_shard must be in \[1, 100000\], got 0"),
        ({"jpeg_quality": 101}, r"output\.jpeg_quality must be in \[1, 100\], got 101"),
        ({"png_compression": -1}, r"output\.png_compression"),
        ({"members": ["depth", "colour"]}, r"output\.members has unknown member\(s\) \['colour'\]"),
        ({"members": ["depth", "depth"]}, r"lists a member twice"),
        ({"dir": " "}, r"output\.dir must be a non-empty path"),
        ({"overwrite": "resume"}, r"output\.overwrite must be one of \['RESUME', 'ERROR', 'REPLACE'\]"),
    ],
)
def test_bad_values_name_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OutputConfig(**kwargs)


def test_hydra_override_of_an_enum_by_name() -> None:
    base = OmegaConf.merge(OmegaConf.structured(OutputConfig), OmegaConf.load(PRESET))
    cfg = OmegaConf.to_object(OmegaConf.merge(base, OmegaConf.from_dotlist(["overwrite=REPLACE"])))
    assert cfg.overwrite is Overwrite.REPLACE
