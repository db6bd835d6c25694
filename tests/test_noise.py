import numpy as np
import pytest
from scipy import stats

from utils.errors import UserError
from utils.noise import asymmetric_map, corrupt_labels, pick_duplicates

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.37, 1.0])
def test_symmetric_exact_count_never_true(rate):
    y = np.arange(5000) % 10
    g = corrupt_labels(y, 10, "symmetric", rate, seed=3)
    flipped = g != y
    assert flipped.sum() == round(rate * len(y))  # exact count, and a flip never lands on the true class


def test_symmetric_uniform_over_other_classes():
    y = np.zeros(20000, dtype=np.int64)
    g = corrupt_labels(y, 10, "symmetric", 0.5, seed=0)
    counts = np.bincount(g[g != 0], minlength=10)[1:]
    assert counts.sum() == 10000
    assert stats.chisquare(counts).pvalue > 1e-3


def test_seed_controls_noise_only():
    y = np.arange(1000) % 7
    a = corrupt_labels(y, 7, "symmetric", 0.2, seed=1)
    assert np.array_equal(a, corrupt_labels(y, 7, "symmetric", 0.2, seed=1))
    assert not np.array_equal(a, corrupt_labels(y, 7, "symmetric", 0.2, seed=2))


def test_asymmetric_cifar10_map():
    m = asymmetric_map(CIFAR10)
    name = dict(zip(CIFAR10, range(10)))
    assert m[name["truck"]] == name["automobile"] and m[name["bird"]] == name["airplane"]
    assert m[name["deer"]] == name["horse"] and m[name["cat"]] == name["dog"] and m[name["dog"]] == name["cat"]
    assert m[name["frog"]] == name["frog"]
    y = np.arange(10000) % 10
    g = corrupt_labels(y, 10, "asymmetric", 0.2, seed=0, classes=CIFAR10)
    assert (g != y).sum() == 2000 and np.all(g[g != y] == m[y[g != y]])
    assert np.array_equal(asymmetric_map([str(i) for i in range(4)]), [1, 2, 3, 0])


def test_random_labels_cover_all_classes():
    y = np.zeros(10000, dtype=np.int64)
    g = corrupt_labels(y, 10, "random", 0.0, seed=0)
    counts = np.bincount(g, minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_duplicates_conflict_and_come_from_clean():
    y = np.arange(1000) % 10
    g = corrupt_labels(y, 10, "symmetric", 0.1, seed=0)
    src, lab = pick_duplicates(y, g, 10, 50, seed=0)
    assert len(set(src)) == 50 and np.all(g[src] == y[src]) and np.all(lab != y[src])
    # the noise itself is unchanged by asking for duplicates (separate stream)
    assert np.array_equal(g, corrupt_labels(y, 10, "symmetric", 0.1, seed=0))


def test_asymmetric_digits_map():
    digits = [str(i) for i in range(10)]
    m = asymmetric_map(digits)
    assert {int(s): int(d) for s, d in enumerate(m) if s != d} == {2: 7, 3: 8, 7: 1, 5: 6, 6: 5}
    y = np.repeat(np.arange(10), 20)
    g = corrupt_labels(y, 10, "asymmetric", 0.1, seed=0, classes=digits)
    moved = g != y
    assert moved.sum() == 20 and set(y[moved]) <= {2, 3, 5, 6, 7} and np.array_equal(g[moved], m[y[moved]])


# ----------------------------------------------------------------------------- instance-dependent noise (pure part)
def test_reference_confusion_hand_case():
    from utils.noise import reference_confusion

    other = np.array([[1, 2, 0, 3, 1], [1, 2, 2, 3, 0], [2, 0, 2, 0, 0]])
    prob = np.array([[.2, .1, .4, .3, .25], [.3, .1, .1, .3, .125], [.6, .05, .1, .3, .125]])
    conf, cls = reference_confusion(other, prob)
    assert np.allclose(conf, [1.1 / 3, .25 / 3, .2, .3, .5 / 3])
    # weighted votes: s0 class 1 .5 < class 2 .6; s2 class 0 .4 > class 2 .2; s4 class 0 .25 = class 1 .25 -> lower
    assert cls.tolist() == [2, 2, 0, 3, 0]


def test_instance_labels_exact_flips_by_confusability():
    from utils.noise import instance_labels

    labels = np.array([0, 1, 1, 2, 4])
    conf = np.array([1.1 / 3, .25 / 3, .2, .3, .5 / 3])
    cls = np.array([2, 2, 0, 3, 0])
    assert instance_labels(labels, conf, cls, 0.4).tolist() == [2, 1, 1, 3, 4]  # the two most confusable
    assert instance_labels(labels, conf, cls, 0.6).tolist() == [2, 1, 0, 3, 4]
    assert instance_labels(labels, conf, cls, 0.0).tolist() == labels.tolist()
    # ties go to the lower index; a sample 'confused' with its own label is never chosen
    tie = instance_labels(np.array([0, 0, 0, 0]), np.array([.5, .9, .5, .95]), np.array([1, 1, 1, 0]), 0.5)
    assert tie.tolist() == [1, 1, 0, 0]
    with pytest.raises(UserError, match="confuses only 3"):
        instance_labels(np.array([0, 0, 0, 0]), np.array([.5, .9, .5, .95]), np.array([1, 1, 1, 0]), 1.0)


def test_instance_kind_needs_a_reference():
    with pytest.raises(UserError, match="noise.reference"):
        corrupt_labels(np.arange(10) % 2, 2, "instance", 0.1, seed=0)
