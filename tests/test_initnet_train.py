"""The learned initializer's trainer (apps/initnet): reproducible for a seed, it moves the network
off the content init, and its command writes weights the fitter loads."""
import torch

from gaussianvision.apps.initnet.train import init_loss, main, random_crops, train, training_images
from gaussianvision.fit.learned_init import InitNet, load_init_net


def test_training_is_reproducible_for_a_seed_and_leaves_the_content_init():
    a, log_a = train(steps=3, batch=2, crop=48, seed=5, log_every=1)
    b, log_b = train(steps=3, batch=2, crop=48, seed=5, log_every=1)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert [r["gain_db"] for r in log_a] == [r["gain_db"] for r in log_b]
    assert a.fc2.weight.abs().sum() > 0  # zero at the start: the content init itself


def test_the_loss_of_an_untrained_network_is_the_content_init_loss():
    gen = torch.Generator().manual_seed(0)
    images = random_crops(training_images()[:3], 2, 48, gen)
    loss, p_content, p_learned = init_loss(InitNet(), images, 60, torch.Generator().manual_seed(1))
    assert abs(p_content - p_learned) < 1e-4
    assert loss.requires_grad


def test_the_command_writes_weights_the_fitter_loads(tmp_path, capsys):
    out = tmp_path / "w.npz"
    assert main(["--steps", "2", "--batch", "2", "--crop", "48", "--out", str(out)]) == 0
    net = load_init_net(out)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in InitNet().parameters())
    assert '"out"' in capsys.readouterr().out
