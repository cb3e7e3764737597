"""Every public name of neve's four packages stays importable from the package itself."""

import importlib

import pytest

PUBLIC = {
    "neve.models": [
        "AnalyticClassifier", "Backbone", "BufferLayer", "ImagePreprocess",
        "PretrainedClassifier", "IncrementalRidge", "dataset_fingerprint",
        "extract_features", "pretrained_backbone",
    ],
    "neve.plugins": [
        "AnalyticHeadPlugin", "AnytimeAccuracy", "ClassGaussianStats", "ClassifierAlignmentPlugin",
        "CurriculumEffectiveness", "DDPPlugin", "ExactShardsPlugin", "GlobalBatchPlugin",
        "LastAccuracy", "SeenClassesEvaluation", "SlowLearnerPlugin", "WholeEvaluationPlugin",
        "curriculum_effectiveness",
        "effectiveness_f", "init_distributed", "maybe_load_checkpoint",
        "restore_submodule_attributes", "save_checkpoint", "seen_classes_stream",
    ],
    "neve.benchmarks": [
        "BackboneFeatures", "BoundaryAwareOnlineExperience", "CurriculumDesigner",
        "EpisodeResults", "IndexedSubset", "LabelledTensorDataset", "Occlusion", "PixelNoise",
        "cfsl_episodes", "class_balanced_subset", "curriculum_benchmark", "curriculum_score",
        "default_cache_dir", "digits", "disc_mask", "encode_episode", "encode_episodes",
        "episode_benchmark", "fashion_mnist", "instance_test_episodes", "make_corruption",
        "mean_confidence_interval", "occlusion_radius", "paired_conditions", "run_episodes",
        "score_orders", "select_classes", "si_blurry_benchmark",
        "si_blurry_split", "split_online",
    ],
    "neve.strategies": [
        "AnalyticCIL", "NearestPrototype", "RecentSetsBuffer", "SLCA", "episode_evaluator",
        "paper_replay_settings", "pretrain_tune",
    ],
}


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_public_names_stay_importable(package):
    module = importlib.import_module(package)
    missing = [n for n in PUBLIC[package] if not hasattr(module, n)]
    assert not missing, f"{package} lost {missing}"
    assert set(PUBLIC[package]) <= set(module.__all__)
