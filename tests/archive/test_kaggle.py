"""Kaggle 式实验（archive/kaggle/breast_cancer_competition.py）：分层 k 折正确、特征工程不泄漏、
提交文件形状与列正确、模型明显好于多数类基线、报告里的数字来自本次运行。"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO_ROOT, load_script

SCRIPT = REPO_ROOT / "archive" / "kaggle" / "breast_cancer_competition.py"


@pytest.fixture(scope="module")
def comp():
    return load_script(SCRIPT)


@pytest.fixture(scope="module")
def experiment(comp):
    # 缩小的完整流程：5 折、MLP 30 步、梯度提升 30 轮、不画图（几秒）
    return comp.run_experiment(n_folds=5, mlp_epochs=30, gb_iters=30, make_plots=False)


@pytest.mark.parametrize("n,k,pos", [(569, 5, 0.37), (100, 3, 0.5), (53, 4, 0.2), (40, 10, 0.25)])
def test_stratified_kfold_disjoint_covering_and_stratified(comp, n, k, pos):
    rng = np.random.default_rng(n)
    y = (rng.permutation(n) < round(pos * n)).astype(int)
    folds = comp.stratified_kfold(y, k, seed=1)
    assert len(folds) == k
    vals = [v for _, v in folds]
    assert sorted(np.concatenate(vals).tolist()) == list(range(n))  # 不重不漏
    for train_idx, val_idx in folds:
        assert len(np.intersect1d(train_idx, val_idx)) == 0 and len(train_idx) + len(val_idx) == n
    for c in (0, 1):
        counts = [int((y[v] == c).sum()) for v in vals]
        assert max(counts) - min(counts) <= 1  # 每类在各折里的数量最多差 1
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1
    assert comp.stratified_kfold(y, k, seed=1)[0][1].tolist() == folds[0][1].tolist()  # 同种子可复现


def test_stratified_kfold_rejects_bad_input(comp):
    with pytest.raises(ValueError, match="折"):
        comp.stratified_kfold(np.array([0, 0, 0, 1, 1]), 3)
    with pytest.raises(ValueError, match="至少为 2"):
        comp.stratified_kfold(np.array([0, 1] * 5), 1)


def test_holdout_split_is_stratified_and_disjoint(comp):
    full = comp.load_competition_data()
    train, test = comp.train_test_split_stratified(full)
    assert len(train) + len(test) == len(full) and set(train["id"]).isdisjoint(test["id"])
    assert abs(train[comp.TARGET].mean() - test[comp.TARGET].mean()) < 0.01
    assert len(test) == pytest.approx(0.2 * len(full), abs=1)


def test_feature_engineering_is_row_wise(comp):
    # 只依赖本行：对子集做与对整表做再取子集结果相同（所以可以在切分前做，不会泄漏）
    full = comp.load_competition_data()
    skewed = ["mean_area", "area_error"]
    whole = comp.engineer_features(full, skewed)
    part = comp.engineer_features(full.iloc[100:150], skewed)
    pd.testing.assert_frame_equal(whole.iloc[100:150], part)
    assert "id" not in whole.columns and comp.TARGET not in whole.columns
    assert np.isfinite(whole.to_numpy()).all()


def test_submission_csv_shape_and_columns(experiment):
    sub = pd.read_csv(experiment["submission_path"])
    assert list(sub.columns) == ["id", "malignant"]
    assert len(sub) == experiment["n_test"] and sub["id"].is_unique
    assert sub["malignant"].between(0, 1).all()
    full_ids = set(range(experiment["n_train"] + experiment["n_test"]))
    assert set(sub["id"]) <= full_ids


def test_models_beat_majority_baseline(experiment):
    res = experiment["results"]
    majority = res["majority"]
    assert majority.mean("auc") == pytest.approx(0.5)
    for name in ("logistic_regression", "gradient_boosting", "torch_mlp", "ensemble_lr_mlp"):
        assert res[name].mean("acc") > majority.mean("acc") + 0.2, name
        assert res[name].mean("auc") > 0.95, name
        assert res[name].mean("logloss") < majority.mean("logloss"), name
    assert experiment["best"] != "majority"
    assert experiment["holdout"]["auc"] > 0.95


def test_report_uses_measured_numbers(experiment):
    text = experiment["report_path"].read_text(encoding="utf-8")
    res = experiment["results"]
    for name, r in res.items():
        assert f"| {name} | {r.mean('auc'):.4f} ± {r.std('auc'):.4f}" in text
    assert f"AUC {experiment['holdout']['auc']:.4f}" in text
    assert f"**{experiment['best']}**" in text


def test_torch_mlp_classifier_api(comp):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    proba = comp.TorchMLPClassifier(epochs=80).fit(X, y).predict_proba(X)
    assert proba.shape == (80, 2) and np.allclose(proba.sum(1), 1)
    assert ((proba[:, 1] > 0.5) == y).mean() > 0.9
