"""`ml-playground export` of a chat fine-tune whose chat template has no Ollama form."""

from __future__ import annotations

from pathlib import Path

from ml_playground.checkpoint import seal_adapters
from ml_playground.data.chat_records import chat_record_format
from ml_playground.run_folder import HFRunMeta, write_run_meta
from tests.cli_helpers import assert_one_error_line, run_cli
from tests.experiments import lora_run
from tests.finetune_helpers import chat_tokenizer

# Turn numbers in the text: no fixed opening per role, so no Go template without counting.
NUMBERED_TURNS = (
    "{%- for m in messages %}{{ loop.index }}. {{ m['role'] }}: {{ m['content'] }}\n"
    "{%- endfor %}{%- if add_generation_prompt %}assistant:{%- endif %}"
)


def test_a_chat_template_without_an_ollama_form_is_one_error_line_naming_the_override(
    tmp_path: Path,
) -> None:
    base = tmp_path / "base"
    base.mkdir()
    folder = tmp_path / "odd-chat"
    out = folder / "out"
    (out / "adapters" / "best").mkdir(parents=True)
    (out / "adapters" / "best" / "adapter_config.json").write_text("{}", encoding="utf-8")
    seal_adapters(out / "adapters" / "best")
    chat_tokenizer("qwen2", NUMBERED_TURNS).save_pretrained(str(out / "tokenizer"))
    write_run_meta(
        out,
        HFRunMeta(
            **chat_record_format("messages").record_format(),
            base_model=str(base),
            revision=None,
            vocab_size=10,
            lora=True,
        ),
    )
    converter = tmp_path / "convert_hf_to_gguf.py"
    converter.write_text(
        "raise SystemExit('the export must stop before converting')\n", encoding="utf-8"
    )
    lora_run(folder, base, {"export.ollama": {"enabled": True, "convert_bin": str(converter)}})
    result = run_cli(tmp_path, "export", folder)

    line = assert_one_error_line(result)
    assert f"chat template of {base}" in line
    assert "[export.ollama] template" in line
    assert not (folder / "export").exists()
