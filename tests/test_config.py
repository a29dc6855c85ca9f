import re
from pathlib import Path

import pytest

from lora_whisper.train.recipe import RecipeError, find_recipe, load_recipe

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_names_its_command(path, monkeypatch):
    for var in ("CV_FA_MANIFEST", "CV_UR_MANIFEST", "CV_OTHER_MANIFEST", "CV_EN_MANIFEST"):
        monkeypatch.setenv(var, "manifest.jsonl")  # recipes for user data name it through the environment
    recipe = load_recipe(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# lora-whisper train"), first
    if "--recipe" not in first:
        assert f"--lang {recipe.language}" in first and f"--domain {recipe.domain}" in first
    if recipe.data.source == "synthetic":
        from lora_whisper.train.synth import corpus_path, read_corpus

        train, test = read_corpus(corpus_path(recipe.data.corpus))
        assert len(train) >= 250 and len(test) >= 60 and not set(train) & set(test)


def test_overrides_and_defaults():
    r = load_recipe(RECIPES[0], ["train.lr=1e-4", "lora.r=8", "lora.target_modules=[q_proj,k_proj,v_proj]"])
    assert r.train.lr == 1e-4 and r.lora.r == 8 and r.lora.target_modules == ["q_proj", "k_proj", "v_proj"]
    assert find_recipe("fr", "medical").name == "fr-medical.yaml" and find_recipe("xx", "none") is None
    g = load_recipe(
        None, language="it", domain="law", data={"source": "manifest", "train": "a.jsonl", "test": "b.jsonl"}
    )
    assert g.name == "it-law" and str(g.run_dir) == "runs/it-law"


def test_all_problems_reported_at_once():
    with pytest.raises(RecipeError) as e:
        load_recipe(
            None,
            [
                "language=xx",
                "train.lr=-1",
                "lora.scope=both",
                "data.source=synthetic",
                "train.batch_size=0",
                "lora.target_modules=[q_proj,wrong]",
                "output.name=../up",
                "eval.beam_size=0",
            ],
        )
    msg = str(e.value)
    for needle in (
        "language: 'xx' is not a Whisper language",
        "train.lr",
        "lora.scope",
        "data.corpus: required",
        "train.batch_size",
        "lora.target_modules",
        "output.name",
        "eval.beam_size: must be an integer from 1 to 16",
    ):
        assert needle in msg, needle
    assert len(e.value.problems) == 8


def test_unknown_field_is_named():
    with pytest.raises(RecipeError, match="train.learning_rate: unknown field"):
        load_recipe(
            None, ["train.learning_rate=1"], language="fr", data={"source": "synthetic", "corpus": "fr-medical"}
        )


def test_real_speech_recipe_takes_the_manifest_from_the_environment(monkeypatch, tmp_path):
    path = Path(__file__).parents[1] / "recipes" / "en-commonvoice.yaml"
    assert "/work/shared" not in path.read_text() and "shared/speech" not in path.read_text()
    monkeypatch.delenv("CV_EN_MANIFEST", raising=False)
    with pytest.raises(RecipeError, match="CV_EN_MANIFEST is not set.*--set data.train=PATH"):
        load_recipe(path)
    r = load_recipe(path, [f"data.train={tmp_path}/m.jsonl", f"data.test={tmp_path}/m.jsonl"])
    assert r.data.train.endswith("m.jsonl") and r.data.split_column == "split" and r.data.test_split == "dev"
    monkeypatch.setenv("CV_EN_MANIFEST", str(tmp_path / "cv.jsonl"))
    r = load_recipe(path)
    assert r.data.speaker_column == "speaker" and r.data.validation > 0 and r.language == "en"
    from lora_whisper.train.recipe import expand_path

    assert expand_path(r.data.train) == str(tmp_path / "cv.jsonl")


def test_gpu_recipe_for_the_full_common_voice_validates():
    r = load_recipe(Path(__file__).parents[1] / "recipes" / "fr-commonvoice-gpu.yaml")
    assert r.data.source == "hub" and r.data.dataset.startswith("mozilla-foundation/common_voice_")
    assert r.train.precision in ("fp16", "bf16") and r.data.validation > 0 and r.data.max_train is None


def test_new_fields_are_checked():
    with pytest.raises(RecipeError) as e:
        load_recipe(
            None,
            [
                "language=fr",
                "data.corpus=fr-medical",
                "train.precision=fp8",
                "data.timestamps=2",
                "data.validation=-1",
                "lora.scope=decoder",
                "data.speed_perturb=[0.9,1.1]",
                "data.speed_copies=0",
                "train.mask_time_prob=1.5",
            ],
        )
    msg = str(e.value)
    for needle in (
        "train.precision: 'fp8'",
        "data.timestamps",
        "data.validation",
        "data.speed_copies: decoder-only speed perturbation adds copies",
        "mask_time_prob",
    ):
        assert needle in msg, needle
    r = load_recipe(
        None, ["language=fr", "data.corpus=fr-medical", "data.speed_perturb=[0.9,1.1]", "train.precision=bf16"]
    )
    assert tuple(r.data.speed_perturb) == (0.9, 1.1) and "speed_perturb:\n  - 0.9" in r.to_yaml()


def test_gpu_recipe_for_persian_validates():
    r = load_recipe(Path(__file__).parents[1] / "recipes" / "fa-commonvoice-gpu.yaml")
    assert r.language == "fa" and r.base.model == "openai/whisper-small" and r.base.quantize == "int8"
    assert (
        r.data.source == "hub"
        and r.data.dataset.startswith("mozilla-foundation/common_voice_")
        and r.data.config == "fa"
    )
    assert r.lora.scope == "encoder+decoder" and r.train.precision in ("fp16", "bf16") and r.data.validation > 0
    assert r.calibration.negatives and all((Path(__file__).parents[1] / p).is_file() for p in r.calibration.negatives)


@pytest.mark.parametrize("lang,rival", [("fa", "ur"), ("ur", "fa")])
def test_real_language_recipes_read_three_manifests_from_the_environment(lang, rival, monkeypatch, tmp_path):
    from lora_whisper.train.recipe import expand_path

    env = {v: str(tmp_path / f"{v}.jsonl") for v in ("CV_FA_MANIFEST", "CV_UR_MANIFEST", "CV_OTHER_MANIFEST")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CV_EN_MANIFEST", raising=False)
    path = Path(__file__).parents[1] / "recipes" / f"{lang}-commonvoice.yaml"
    r = load_recipe(path)
    own, other = env[f"CV_{lang.upper()}_MANIFEST"], env[f"CV_{rival.upper()}_MANIFEST"]
    assert r.language == lang and r.output.name == f"{lang}-commonvoice" and r.base.quantize == "int8"
    assert expand_path(r.data.train) == own and expand_path(r.data.test) == own and r.data.test_split == "dev"
    # the rival language's real speech and the other languages' are contrast and calibration negatives, train split
    # only (its dev speakers stay unheard), and every variable the recipe names is one of the three
    assert {expand_path(c) for c in r.data.contrast} >= {other, env["CV_OTHER_MANIFEST"]}
    assert {expand_path(c) for c in r.calibration.negatives} >= {other, env["CV_OTHER_MANIFEST"]}
    assert set(re.findall(r"\$\{(\w+)\}", path.read_text())) == set(env)
    assert r.data.contrast_split == ["train", "other"] == r.calibration.split
    assert rival in r.data.contrast_languages and rival in r.calibration.languages and "hi" in r.calibration.languages
    # half of the 24 languages of the other-language set are never trained or calibrated on: routing is measured
    # on them, as it will be checked on languages nobody here has
    other_set = set("tt mt hi pa ta ru it nl pl id ca cy eu ka mn el vi zh ja th ro cs hu fi".split())
    assert len(other_set - set(r.calibration.languages) - set(r.data.contrast_languages)) == 12
    root = Path(__file__).parents[1]
    assert all((root / p).is_file() for p in r.data.contrast + r.calibration.negatives if "$" not in p)
    monkeypatch.delenv(f"CV_{rival.upper()}_MANIFEST")
    with pytest.raises(RecipeError, match=rf"data.contrast: environment variable CV_{rival.upper()}_MANIFEST"):
        load_recipe(path)
