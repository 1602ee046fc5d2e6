"""The seed's prompt-tuning notebook, ported with only the import changed, on a tiny random BLOOM.

Two adapters on one base model: RANDOM init for prompt generation, TEXT init for hate-speech
classification; both trained with transformers.Trainer, saved, reloaded and switched with
set_adapter.
"""

from __future__ import annotations

import os

import pytest
import torch
import transformers
from datasets import load_dataset
from transformers import Trainer, TrainingArguments

from peftkit import PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model

from ..conftest import minilm_dir

NUM_VIRTUAL_TOKENS = 4
NUM_EPOCHS = 1


def get_outputs(model, inputs, max_new_tokens=100):
    outputs = model.generate(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        max_new_tokens=max_new_tokens,
        repetition_penalty=1.5,
    )
    return outputs


def create_training_arguments(path, learning_rate=0.0035, epochs=6):
    training_args = TrainingArguments(
        output_dir=path,
        use_cpu=True,
        auto_find_batch_size=True,
        learning_rate=learning_rate,
        num_train_epochs=epochs,
        report_to=[],
    )
    return training_args


def create_trainer(model, training_args, train_dataset, tokenizer):
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    return trainer


@pytest.fixture
def foundational_model(tokenizer):
    torch.manual_seed(0)
    config = transformers.BloomConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        n_layer=2,
        n_head=4,
        pad_token_id=tokenizer.pad_token_id,
    )
    return transformers.AutoModelForCausalLM.from_config(config)


def test_seed_prompt_tuning_notebook(foundational_model, tokenizer, data_dir, tmp_path):
    model_name = str(minilm_dir())
    data_prompt = load_dataset("csv", data_files=str(data_dir / "awesome-chatgpt-prompts.csv"))
    data_prompt = data_prompt.map(lambda samples: tokenizer(samples["prompt"]), batched=True)
    train_sample_prompt = data_prompt["train"].select(range(50))
    train_sample_prompt = train_sample_prompt.remove_columns("act")

    data_sentences = load_dataset(
        "csv", data_files=str(data_dir / "ethos-binary.csv"), delimiter=";"
    )
    data_sentences = data_sentences.map(lambda samples: tokenizer(samples["comment"]), batched=True)
    train_sample_sentences = data_sentences["train"].select(range(50))
    train_sample_sentences = train_sample_sentences.remove_columns(["comment", "isHate"])

    generation_config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        prompt_tuning_init=PromptTuningInit.RANDOM,
        num_virtual_tokens=NUM_VIRTUAL_TOKENS,
        tokenizer_name_or_path=model_name,
    )
    classification_config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        prompt_tuning_init=PromptTuningInit.TEXT,
        num_virtual_tokens=NUM_VIRTUAL_TOKENS,
        prompt_tuning_init_text="Indicate if the text contains hate speech or no hate speech",
        tokenizer_name_or_path=model_name,
    )

    peft_model_prompt = get_peft_model(foundational_model, generation_config)
    peft_model_prompt.print_trainable_parameters()
    output_directory_prompt = os.path.join(tmp_path, "peft_outputs_prompt")
    trainer_prompt = create_trainer(
        peft_model_prompt,
        create_training_arguments(output_directory_prompt, 0.003, NUM_EPOCHS),
        train_sample_prompt,
        tokenizer,
    )
    trainer_prompt.train()
    trainer_prompt.model.save_pretrained(output_directory_prompt)
    checkpoints = [f for f in os.listdir(output_directory_prompt) if f.startswith("checkpoint-")]
    assert checkpoints  # each holds the prompt adapter alone, in PEFT's layout
    for name in checkpoints:
        files = set(os.listdir(os.path.join(output_directory_prompt, name)))
        assert {
            "adapter_config.json",
            "adapter_model.safetensors",
        } <= files and "model.safetensors" not in files

    peft_model_sentences = get_peft_model(foundational_model, classification_config)
    output_directory_sentences = os.path.join(tmp_path, "peft_outputs_sentences")
    trainer_sentences = create_trainer(
        peft_model_sentences,
        create_training_arguments(output_directory_sentences, 0.003, NUM_EPOCHS),
        train_sample_sentences,
        tokenizer,
    )
    trainer_sentences.train()
    trainer_sentences.model.save_pretrained(output_directory_sentences)

    loaded_model_prompt = PeftModel.from_pretrained(
        foundational_model, output_directory_prompt, is_trainable=False
    )
    input_prompt = tokenizer("I want you to act as a motivational coach. ", return_tensors="pt")
    loaded_model_prompt_outputs = get_outputs(loaded_model_prompt, input_prompt, max_new_tokens=8)
    tokenizer.batch_decode(loaded_model_prompt_outputs, skip_special_tokens=True)

    loaded_model_prompt.load_adapter(output_directory_sentences, adapter_name="classifier")
    loaded_model_prompt.set_adapter("classifier")
    input_sentence = tokenizer("I work with people who hate others. ", return_tensors="pt")
    loaded_model_sentences_outputs = get_outputs(
        loaded_model_prompt, input_sentence, max_new_tokens=8
    )
    tokenizer.batch_decode(loaded_model_sentences_outputs, skip_special_tokens=True)

    # what the notebook shows by eye, checked: each adapter reloads exactly and switching changes
    # the prompt
    input_sentence.pop("token_type_ids", None)
    with torch.no_grad():
        loaded_model_prompt.set_adapter("default")
        first = loaded_model_prompt(**input_sentence).logits
        loaded_model_prompt.set_adapter("classifier")
        second = loaded_model_prompt(**input_sentence).logits
        torch.testing.assert_close(second, peft_model_sentences.eval()(**input_sentence).logits)
        torch.testing.assert_close(first, peft_model_prompt.eval()(**input_sentence).logits)
    assert not torch.allclose(first, second)
    assert loaded_model_sentences_outputs.shape[1] == input_sentence["input_ids"].shape[1] + 8
