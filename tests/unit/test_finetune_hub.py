"""Where pretrained models come from: local folders, the hub, tokens, and load failures.

The hub is unreachable (and HF_HUB_OFFLINE=1 is set by tests/conftest.py), so hub ids are
exercised through the offline path, and hub-side refusals (gated, unknown, bad revision)
through the exceptions huggingface_hub raises for them.
"""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

from ml_playground.config import HFModelConfig
from ml_playground.errors import ModelLoadError
from ml_playground.finetune.hub import (
    ModelSource,
    hub_token,
    load_error,
    load_tokenizer,
    local_model_dir,
)

HUB_ID = "google/gemma-3-270m-it"


def hub_refusal(
    kind: type[RepositoryNotFoundError | RevisionNotFoundError], status: int
) -> OSError:
    """What transformers raises when the hub refuses a file: an OSError caused by `kind`."""
    request = httpx2.Request("GET", f"https://huggingface.co/{HUB_ID}/resolve/main/config.json")
    cause = kind("refused", response=httpx2.Response(status, request=request))
    error = OSError(f"You are trying to access a gated repo.\nMake sure to ... {HUB_ID}")
    error.__cause__ = cause
    return error


def test_existing_folder_is_a_local_model_and_gets_no_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUGGINGFACE_HUB_TOKEN", "hf_secret")

    source = ModelSource.from_config(HFModelConfig(model_name=str(tmp_path)))

    assert source.local_dir == tmp_path.resolve()
    assert "token" not in source.options()
    assert "revision" not in source.options()


@pytest.mark.parametrize("name", ["/nowhere/tiny-model", "./models/tiny", "~/models/x", "a/b/c"])
def test_a_path_that_does_not_exist_is_a_one_line_error(name: str) -> None:
    with pytest.raises(ModelLoadError, match=r"is not a folder; point it at a folder") as caught:
        local_model_dir(name)

    assert "\n" not in str(caught.value)


def test_hub_id_is_not_mistaken_for_a_path() -> None:
    assert local_model_dir("Qwen/Qwen2.5-1.5B") is None


def test_uncached_hub_id_offline_says_how_to_get_the_model() -> None:
    source = ModelSource.from_config(HFModelConfig(model_name="Qwen/Qwen2.5-0.5B"))

    with pytest.raises(ModelLoadError) as caught:
        load_tokenizer(source)

    message = str(caught.value)
    assert "not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in message
    assert "hf download Qwen/Qwen2.5-0.5B" in message
    assert "\n" not in message


def test_gated_model_says_to_accept_the_licence_and_set_a_token() -> None:
    source = ModelSource(name=HUB_ID, token="hf_secret")

    error = load_error(hub_refusal(GatedRepoError, 401), source, "model")

    assert str(error) == (
        f"{HUB_ID} is a gated model: accept its licence at https://huggingface.co/{HUB_ID} with "
        "your account, then set HUGGINGFACE_HUB_TOKEN (environment or .env) to a token of it"
    )
    assert "hf_secret" not in str(error)


def test_unknown_model_and_unknown_revision_name_the_key_to_fix() -> None:
    source = ModelSource(name="nobody/nothing", revision="v9")

    unknown = load_error(hub_refusal(RepositoryNotFoundError, 404), source, "model")
    no_revision = load_error(hub_refusal(RevisionNotFoundError, 404), source, "model")

    assert "no model 'nobody/nothing' on the Hugging Face hub" in str(unknown)
    assert "train.hf_model.model_name" in str(unknown)
    assert "revision 'v9' of nobody/nothing does not exist" in str(no_revision)


def test_folder_without_a_model_is_an_error_naming_the_folder(tmp_path: Path) -> None:
    source = ModelSource.from_config(HFModelConfig(model_name=str(tmp_path)))

    with pytest.raises(ModelLoadError, match=rf"cannot load the tokenizer from {tmp_path}"):
        load_tokenizer(source)


def test_token_comes_from_the_environment_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    (tmp_path / ".env").write_text("HUGGINGFACE_HUB_TOKEN=hf_from_file\n", encoding="utf-8")

    assert hub_token(tmp_path) == "hf_from_env"


def test_token_is_read_from_the_nearest_dotenv_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HUGGINGFACE_HUB_TOKEN", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text("HUGGINGFACE_HUB_TOKEN=hf_from_file\n", encoding="utf-8")
    nested = tmp_path / "project" / "run"
    nested.mkdir(parents=True)

    source = ModelSource.from_config(HFModelConfig(model_name="Qwen/Qwen2.5-0.5B"), cwd=nested)

    assert source.token == "hf_from_file"
    assert "hf_from_file" not in repr(source)
