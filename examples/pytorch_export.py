#!/usr/bin/env python3
"""The PyTorch side of examples/pytorch_interop.cpp (needs python3-torch, e.g. Debian's 1.13).

  pytorch_export.py export DIR   writes DIR/weights.safetensors (a model's state_dict) and
                                 DIR/io.safetensors (inputs and PyTorch's outputs)
  pytorch_export.py check DIR    loads DIR/tapegrad_weights.safetensors (written by tapegrad)
                                 into the same model and checks it reproduces DIR/tapegrad_io

safetensors is written and read by hand (8-byte length, JSON header, raw data), so only torch is
needed.
"""
import json
import struct
import sys

import torch
import torch.nn as nn

DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int32: "I32", torch.int64: "I64",
          torch.bool: "BOOL"}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                 nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
        self.rnn = nn.LSTM(5, 7)
        self.gru = nn.GRU(5, 3, num_layers=2, batch_first=True)


def outputs(net, image, seq):
    with torch.no_grad():
        out, (h, c) = net.rnn(seq)
        g, _ = net.gru(seq.transpose(0, 1))
        return {"cnn_out": net.cnn(image), "lstm_out": out, "lstm_c": c, "gru_out": g}


def save(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in sorted(tensors.items()):
        data = t.detach().contiguous().numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def load(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    types = {v: k for k, v in DTYPES.items()}
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        buf = bytearray(raw[8 + n + b:8 + n + end])
        out[name] = torch.frombuffer(buf, dtype=types[e["dtype"]]).reshape(e["shape"]).clone() \
            if end > b else torch.zeros(e["shape"], dtype=types[e["dtype"]])
    return out


def main():
    mode, d = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    net = Net()
    net.eval()
    if mode == "export":
        with torch.no_grad():  # running statistics that are not the defaults
            net.cnn[1].running_mean.uniform_(-0.5, 0.5)
            net.cnn[1].running_var.uniform_(0.5, 2.0)
            net.cnn[1].num_batches_tracked.fill_(3)
        image, seq = torch.randn(2, 1, 8, 8), torch.randn(6, 2, 5)
        save(d + "/weights.safetensors", net.state_dict())
        save(d + "/io.safetensors", {"image": image, "seq": seq, **outputs(net, image, seq)})
        print("pytorch_export.py: wrote", d + "/weights.safetensors and io.safetensors",
              "with torch", torch.__version__)
    else:
        net.load_state_dict(load(d + "/tapegrad_weights.safetensors"))
        io = load(d + "/tapegrad_io.safetensors")
        got = outputs(net, io["image"], io["seq"])
        worst = max((got[k] - io[k]).abs().max().item() for k in got)
        print(f"pytorch_export.py: PyTorch on tapegrad's weights: largest difference {worst:.2e}")
        sys.exit(0 if worst < 1e-5 else 1)


if __name__ == "__main__":
    main()
