"""The yardstick: a plain Oxford-IIIT Pet trainer of the kind people write in 60 lines.

torchvision's OxfordIIITPet and v2 transforms, an smp U-Net, cross-entropy, AdamW with cosine decay,
every trainval image for training and no validation; the last weights are scored once on the test
split with the same confusion-matrix metrics as seg_pet (seg_pet.metrics), written as test_metrics.json.

    python scripts/baseline.py --data-root ../shared/data --out outputs/baseline --image-size 64 --epochs 20 --seed 0
"""

import argparse
import time
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
from torchvision import tv_tensors
from torchvision.datasets import OxfordIIITPet
from torchvision.transforms import v2

from seg_pet.metrics import ConfusionMatrix, compute_metrics
from seg_pet.runtime.fileio import write_json

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--data-root", default="../shared/data")
p.add_argument("--out", type=Path, required=True)
p.add_argument("--image-size", type=int, default=64)
p.add_argument("--epochs", type=int, default=20)
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--encoder", default="resnet18")
p.add_argument("--seed", type=int, default=0)
p.add_argument("--max-steps", type=int, default=None, help="cap on steps per epoch (tests)")
args = p.parse_args()
torch.manual_seed(args.seed)
s, norm = args.image_size, v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
train_tf = v2.Compose(
    [
        v2.ToImage(),
        v2.RandomResizedCrop(s, scale=(0.5, 1.0)),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(0.2, 0.2, 0.2),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        norm,
    ]
)
test_tf = v2.Compose([v2.ToImage(), v2.Resize((s, s)), v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), norm])


def pet(split, tf):
    def both(image, trimap):  # trimap 1 pet, 2 background, 3 border -> classes 0, 1, 2
        image, mask = tf(image, tv_tensors.Mask(v2.functional.pil_to_tensor(trimap)[0]))
        return image, (mask - 1).long()

    return OxfordIIITPet(args.data_root, split=split, target_types="segmentation", transforms=both)


train = torch.utils.data.DataLoader(pet("trainval", train_tf), args.batch_size, shuffle=True, drop_last=True, num_workers=1)
model = smp.Unet(args.encoder, encoder_weights=None, classes=3)
optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * min(len(train), args.max_steps or len(train)))
started = time.perf_counter()
for epoch in range(args.epochs):
    model.train()
    for step, (images, masks) in enumerate(train):
        if step == args.max_steps:
            break
        loss = torch.nn.functional.cross_entropy(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    print(f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.4f}")
model.eval()
matrix = ConfusionMatrix(3)
with torch.inference_mode():
    for images, masks in torch.utils.data.DataLoader(pet("test", test_tf), 16, num_workers=1):
        matrix.update(masks, model(images).argmax(1))
metrics = {
    "num_images": len(pet("test", test_tf)),
    **compute_metrics(matrix.mat, ["pet", "background", "border"]),
    "confusion": matrix.mat.tolist(),
    "seconds": time.perf_counter() - started,
    "args": {k: str(v) for k, v in vars(args).items()},
}
write_json(args.out / "test_metrics.json", metrics)
print(f"test mIoU {metrics['miou']:.4f} " + " ".join(f"{n} {v:.3f}" for n, v in metrics["iou"].items()))
