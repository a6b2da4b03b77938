import dataclasses

from run.config import RunConfig
from run.stages import STAGE, STAGES, TRAINED, depends_on
from run.state import CHECKPOINTS


def test_table_names_real_sections_and_parents_that_run_first():
    sections = {f.name for f in dataclasses.fields(RunConfig)} - {"name", "device"}
    order = [stage.name for stage in STAGES]
    assert len(set(order)) == len(order) and len({stage.output for stage in STAGES}) == len(STAGES)
    for i, stage in enumerate(STAGES):
        assert set(stage.sections) <= sections, stage.name
        assert stage.parent is None or order.index(stage.parent) < i, stage.name


def test_a_trained_stage_depends_on_its_own_and_its_parents_sections():
    assert TRAINED == CHECKPOINTS == ("vae", "ldm", "controlnet")
    assert all(STAGE[name].output == f"{name}.safetensors" for name in TRAINED)
    assert depends_on("vae") == ("data", "vae", "vae_train")
    assert depends_on("controlnet") == ("data", "vae", "vae_train", "text", "unet", "diffusion", "ldm_train",
                                        "controlnet", "controlnet_train")
    assert depends_on("experiment")[:len(depends_on("plan"))] == depends_on("plan")
