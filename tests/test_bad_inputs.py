"""Bad inputs fail early, naming the problem (the field, file or value), not with a torch traceback.

Cases covered elsewhere (kept there, not repeated here):
- image size / channels / dtype / smaller than a patch, called directly:
  test_models_mae.py::test_bad_inputs_raise_clear_errors
- mask_ratio 1.0 or negative, width not divisible by heads (or by 4), any other bad field:
  test_config.py::test_bad_value_names_field_and_value
- misspelled YAML keys and CLI arguments: test_cli.py::test_misspelled_keys_are_rejected_with_a_suggestion
- weights that do not fit (missing, unexpected, shape-mismatched keys):
  test_interop_loading.py::test_one_error_names_missing_unexpected_and_mismatched_keys
- damaged or non-state-dict weight files: test_interop_loading.py::test_damaged_files_fail_naming_the_file,
  ::test_files_that_hold_no_state_dict
- missing or empty data folders: test_image_folder.py::test_a_missing_folder_names_the_field_and_path,
  ::test_a_root_without_images_names_the_path, ::test_a_labelled_root_whose_class_folders_are_empty_says_so
- a folder of files that are not images: test_image_folder.py::test_a_root_without_images_names_the_path,
  ::test_a_batch_of_only_unreadable_files_is_a_clear_error
- a truncated image mid-epoch (skipped, counted, logged): test_image_folder.py::test_fit_logs_the_skipped_files
- NaN/inf in a batch or in the weights: test_nonfinite.py::test_nan_batch_names_step_components_and_points_at_the_data,
  ::test_non_finite_model_output_is_caught
- a mask ratio that masks nothing (pretraining) or leaves no patch visible, an infinite eps, a
  zero-width MLP: test_config.py::test_settings_that_would_train_nothing_or_nan_are_refused,
  test_cli_errors.py::test_a_bad_value_is_the_last_line_and_exit_status_2
- a negative lr, a batch size of 0, fractions that leave a split empty (also a one-image folder at
  val_fraction 0.9): test_cli_errors.py::test_a_bad_value_is_the_last_line_and_exit_status_2,
  ::test_a_split_left_empty_at_setup_is_named_too, test_image_folder.py::test_fractions_that_leave_a_split_empty_say_which
- an empty, random, truncated or non-Lightning file as --ckpt_path or to load_from_checkpoint:
  test_cli_checkpoint_rule.py::test_a_file_that_is_no_lightning_checkpoint_is_named_in_one_line
- a config of another architecture than --ckpt_path's: test_cli_checkpoint_rule.py::
  test_a_config_of_another_architecture_is_refused_naming_the_fields
- a second fresh fit into a run's folder, a read-only runs/ folder: test_cli_run_folder.py::
  test_a_second_fresh_fit_into_the_same_folder_stops_and_changes_nothing, ::test_a_read_only_runs_folder_is_named_before_any_work
- a full disk: test_fault_tolerance.py::test_a_full_disk_inside_torchs_zip_writer_is_named_and_leaves_no_partial_file
- link loops in an image folder: test_image_folder.py::test_folder_link_loops_list_each_real_file_once_and_are_named
- settings assumed when loading a file without a config: test_interop_loading.py::
  test_settings_a_bare_official_file_cannot_tell_are_warned_not_just_noted
- lit-mae convert errors: test_convert.py::test_convert_errors_name_its_flags_not_python_keywords
"""

from __future__ import annotations

import pytest
from PIL import Image

from conftest import ImageDataModule
from lit_mae import LitLinearProbe, LitMAE


def test_data_of_another_image_size_names_both_sizes_and_the_datamodule_field(tiny_config, make_trainer):
    with pytest.raises(ValueError, match=r"image size 32x32 does not match the model's img_size=16; give it "
                                         r"16x16 images \(a DataModule's image_size\)"):
        make_trainer(max_steps=1).fit(LitMAE(config=tiny_config), ImageDataModule(size=32))


def test_data_with_another_channel_count_names_both(tiny_config, make_trainer):
    with pytest.raises(ValueError, match=r"images have 1 channels but the model was built for in_chans=3; "
                                         r"make the data's channels and the config's in_chans agree"):
        make_trainer(max_steps=1).fit(LitMAE(config=tiny_config), ImageDataModule(channels=1))


def test_an_image_smaller_than_a_patch_is_named(tiny_config):
    with pytest.raises(ValueError, match=r"MAEConfig\.img_size=4 is smaller than one patch \(patch_size=8\)"):
        tiny_config.replace(img_size=4, patch_size=8)


@pytest.mark.parametrize("ratio", [1.0, -0.25])
def test_litmae_mask_ratio_out_of_range_names_the_value(tiny_config, ratio):
    with pytest.raises(ValueError, match=rf"MAEConfig\.mask_ratio must be in \[0, 1\), got {ratio}"):
        LitMAE(config=tiny_config, mask_ratio=ratio)


@pytest.fixture
def small_checkpoint(tiny_config, make_trainer, tmp_path):
    """A LitMAE checkpoint of the tiny architecture (embed_dim 32, depth 1) after one step."""
    trainer = make_trainer(max_steps=1)
    trainer.fit(LitMAE(config=tiny_config, lr=1e-3), ImageDataModule(n=8))
    trainer.save_checkpoint(tmp_path / "small.ckpt")
    return tmp_path / "small.ckpt"


@pytest.mark.parametrize("how", ["resume", "load_from_checkpoint"])
def test_a_checkpoint_of_another_architecture_names_fields_and_weights(tiny_config, make_trainer,
                                                                       small_checkpoint, how):
    wider = tiny_config.replace(embed_dim=64, depth=2)
    with pytest.raises(ValueError) as info:
        if how == "resume":
            make_trainer(max_steps=2).fit(LitMAE(config=wider), ImageDataModule(n=8), ckpt_path=small_checkpoint)
        else:
            LitMAE.load_from_checkpoint(small_checkpoint, config=wider)
    message = str(info.value)
    if how == "resume":  # the checkpoint's own hyper-parameters say what it was
        assert "written with embed_dim=32, depth=1; this model has embed_dim=64, depth=2" in message, message
    for words in ("checkpoint is of another architecture", "shape-mismatched weights",
                  "model.encoder.cls_token (1, 1, 32) vs (1, 1, 64)", "more", "load_from_checkpoint(path)"):
        assert words in message, message


def test_a_checkpoint_with_other_heads_is_refused_although_its_shapes_fit(tiny_config, make_trainer,
                                                                          small_checkpoint):
    other_heads = tiny_config.replace(num_heads=4)  # same shapes, another attention: silently wrong
    with pytest.raises(ValueError, match=r"written with num_heads=2; this model has num_heads=4\)\. "):
        make_trainer(max_steps=2).fit(LitMAE(config=other_heads), ImageDataModule(n=8), ckpt_path=small_checkpoint)


@pytest.mark.parametrize("kind", ["text", "png", "yaml"])
def test_pretrained_pointing_at_a_file_that_is_no_checkpoint_names_it(tmp_path, kind):
    path = tmp_path / {"text": "notes.ckpt", "png": "cat.png", "yaml": "pretrain.yaml"}[kind]
    if kind == "png":
        Image.new("RGB", (8, 8)).save(path)
    else:
        path.write_text("model:\n  class_path: lit_mae.LitMAE\n" if kind == "yaml" else "some notes")
    for system in (LitMAE, LitLinearProbe):  # pretraining and a probe's encoder read `pretrained` alike
        with pytest.raises(ValueError) as info:
            system(pretrained=str(path))
        message = str(info.value)
        assert message.startswith(f"{path}: not a weights file") and "not a checkpoint at all" in message, message
        assert ".ckpt/.pth/.bin/.safetensors file or a Hugging Face model directory" in message, message

