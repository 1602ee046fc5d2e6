"""The seed's LoRA notebook, ported with only the import changed, on a tiny random BLOOM.

The original trains bigscience/bloomz-560m on fka/awesome-chatgpt-prompts; here the same code runs
on a tiny BLOOM with the offline MiniLM tokenizer and the shared CSV copy of the dataset.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import transformers
from datasets import load_dataset
from transformers import Trainer, TrainingArguments

from peftkit import LoraConfig, PeftModel, get_peft_model


def get_outputs(model, inputs, max_new_tokens=100):
    outputs = model.generate(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        max_new_tokens=max_new_tokens,
        repetition_penalty=1.5,
        early_stopping=True,
        eos_token_id=tokenizer_eos(model),
    )
    return outputs


def tokenizer_eos(model):
    return model.config.eos_token_id


@pytest.fixture
def foundation_model(tokenizer):
    torch.manual_seed(0)
    config = transformers.BloomConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        n_layer=2,
        n_head=4,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return transformers.AutoModelForCausalLM.from_config(config)


def test_seed_lora_notebook(foundation_model, tokenizer, data_dir, tmp_path):
    data = load_dataset("csv", data_files=str(data_dir / "awesome-chatgpt-prompts.csv"))
    data = data.map(lambda samples: tokenizer(samples["prompt"]), batched=True)
    train_sample = data["train"].select(range(50))
    train_sample = train_sample.remove_columns("act")

    lora_config = LoraConfig(
        r=4,
        lora_alpha=1,
        target_modules=["query_key_value"],
        lora_dropout=0.05,
        bias="lora_only",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(foundation_model, lora_config)
    peft_model.print_trainable_parameters()
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}

    output_directory = str(tmp_path / "peft_lab_outputs")
    training_args = TrainingArguments(
        output_dir=output_directory,
        auto_find_batch_size=True,
        learning_rate=3e-2,
        num_train_epochs=2,
        use_cpu=True,
        report_to=[],
    )
    trainer = Trainer(
        model=peft_model,
        args=training_args,
        train_dataset=train_sample,
        data_collator=transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    trainer.train()
    assert any(
        not torch.equal(before[n], p) for n, p in peft_model.named_parameters() if p.requires_grad
    )
    assert trainer.state.log_history[-1]["train_loss"] > 0

    peft_model_path = os.path.join(output_directory, "lora_model")
    trainer.model.save_pretrained(peft_model_path)
    trainer.save_model(os.path.join(output_directory, "trainer_save"))
    # Trainer's checkpoints and save_model hold the adapter alone, in PEFT's layout (not the whole
    # model)
    checkpoints = [p for p in Path(output_directory).iterdir() if p.name.startswith("checkpoint-")]
    adapter_bytes = sum(
        p.numel() * p.element_size() for p in peft_model.parameters() if p.requires_grad
    )
    for folder in [*checkpoints, Path(output_directory) / "trainer_save"]:
        names = {p.name for p in folder.iterdir()}
        assert {
            "adapter_config.json",
            "adapter_model.safetensors",
        } <= names and "model.safetensors" not in names
        assert (folder / "adapter_model.safetensors").stat().st_size < adapter_bytes + 10_000
    assert checkpoints, "the run saves a checkpoint at its end"

    input_sentences = tokenizer("I want you to act as a motivational coach. ", return_tensors="pt")
    input_sentences.pop("token_type_ids")
    peft_model.eval()
    with torch.no_grad():
        trained_logits = peft_model(**input_sentences).logits

    loaded_model = PeftModel.from_pretrained(foundation_model, peft_model_path, is_trainable=False)
    with torch.no_grad():
        loaded_logits = loaded_model(**input_sentences).logits
    torch.testing.assert_close(loaded_logits, trained_logits, atol=1e-5, rtol=1e-5)

    foundational_outputs_sentence = get_outputs(loaded_model, input_sentences, max_new_tokens=10)
    assert foundational_outputs_sentence.shape[1] > input_sentences["input_ids"].shape[1]
    tokenizer.batch_decode(foundational_outputs_sentence, skip_special_tokens=True)
