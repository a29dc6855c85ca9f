from pathlib import Path

import pytest

from lora_whisper.train.recipe import RecipeError, find_recipe, load_recipe

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_names_its_command(path, monkeypatch):
    monkeypatch.setenv("CV_FA_MANIFEST", "manifest.jsonl")
    monkeypatch.setenv("CV_EN_MANIFEST", "manifest.jsonl")  # recipes for user data name it through the environment
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


def test_persian_cpu_recipe_takes_its_manifest_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CV_FA_MANIFEST", str(tmp_path / "m.jsonl"))
    monkeypatch.delenv("CV_EN_MANIFEST", raising=False)
    recipe = Path(__file__).parents[1] / "recipes" / "fa-commonvoice.yaml"
    default = load_recipe(recipe)  # the shipped contrast and calibration clips, found from the repository root
    assert default.data.contrast == ["recipes/contrast/manifest.jsonl", "recipes/contrast-tts/manifest.jsonl"]
    root = Path(__file__).parents[1]
    assert all((root / p).is_file() for p in default.data.contrast + default.calibration.negatives)
    assert "recipes/contrast-tts/calibration.jsonl" in default.calibration.negatives
    with pytest.raises(RecipeError, match=r"data.contrast: environment variable CV_EN_MANIFEST is not set"):
        load_recipe(recipe, ['data.contrast=["${CV_EN_MANIFEST}"]'])
    monkeypatch.setenv("CV_EN_MANIFEST", str(tmp_path / "en.jsonl"))
    r = load_recipe(recipe, ['data.contrast=["${CV_EN_MANIFEST}"]'])
    from lora_whisper.train.recipe import expand_path

    assert [expand_path(c) for c in r.data.contrast] == [str(tmp_path / "en.jsonl")]
    assert r.language == "fa" and r.base.quantize == "int8" and r.data.validation > 0 and r.data.test_split == "dev"
    assert expand_path(r.data.train) == str(tmp_path / "m.jsonl")
