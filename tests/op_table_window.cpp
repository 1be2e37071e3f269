// Op table rows of the Window family (convolution, pooling, im2col/col2im), with references as
// direct loops over output positions: no columns, no gemm, nothing shared with the library.
#include <cmath>
#include <limits>

#include "op_table.h"

namespace tgtest {
using namespace tg;

namespace {

struct Win {
  int64_t kh, kw, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
  int64_t oh(int64_t h) const { return (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1; }
  int64_t ow(int64_t w) const { return (w + 2 * pw - dw * (kw - 1) - 1) / sw + 1; }
};

// Calls f(ih, iw, inside) for each tap (ki, kj) of output (oh, ow); inside is false in the padding.
template <class F> void taps(const Win& w, int64_t H, int64_t W, int64_t oh, int64_t ow, F&& f) {
  for (int64_t ki = 0; ki < w.kh; ++ki)
    for (int64_t kj = 0; kj < w.kw; ++kj) {
      int64_t ih = oh * w.sh - w.ph + ki * w.dh, iw = ow * w.sw - w.pw + kj * w.dw;
      f(ki, kj, ih, iw, ih >= 0 && ih < H && iw >= 0 && iw < W);
    }
}

Ref conv_ref(const Ref& x, const Ref& wt, const Ref* bias, const Win& w, int64_t groups) {
  int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3];
  int64_t O = wt.shape[0], Cg = C / groups, Og = O / groups, OH = w.oh(H), OW = w.ow(W);
  Ref out{{}, {N, O, OH, OW}};
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          double acc = bias ? bias->v[o] : 0.0;
          int64_t g = o / Og;
          for (int64_t c = 0; c < Cg; ++c)
            taps(w, H, W, oh, ow, [&](int64_t ki, int64_t kj, int64_t ih, int64_t iw, bool in) {
              if (!in) return;
              acc += x.v[((n * C + g * Cg + c) * H + ih) * W + iw] *
                     wt.v[((o * Cg + c) * w.kh + ki) * w.kw + kj];
            });
          out.v.push_back(acc);
        }
  return out;
}

Ref pool_ref(const Ref& x, const Win& w, bool is_max) {
  int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3];
  int64_t OH = w.oh(H), OW = w.ow(W);
  Ref out{{}, {N, C, OH, OW}};
  for (int64_t p = 0; p < N * C; ++p)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow) {
        double acc = is_max ? -std::numeric_limits<double>::infinity() : 0.0;
        taps(w, H, W, oh, ow, [&](int64_t, int64_t, int64_t ih, int64_t iw, bool in) {
          if (!in) return;
          double v = x.v[(p * H + ih) * W + iw];
          acc = is_max ? std::max(acc, v) : acc + v;
        });
        out.v.push_back(is_max ? acc : acc / static_cast<double>(w.kh * w.kw));
      }
  return out;
}

// Columns: row (c, ki, kj), column (oh, ow).
Ref im2col_ref(const Ref& x, const Win& w) {
  int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3];
  int64_t OH = w.oh(H), OW = w.ow(W), K = w.kh * w.kw;
  Ref out{std::vector<double>(static_cast<size_t>(N * C * K * OH * OW)), {N, C * K, OH * OW}};
  for (int64_t p = 0; p < N * C; ++p)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow)
        taps(w, H, W, oh, ow, [&](int64_t ki, int64_t kj, int64_t ih, int64_t iw, bool in) {
          int64_t row = p * K + ki * w.kw + kj;
          out.v[(row * OH + oh) * OW + ow] = in ? x.v[(p * H + ih) * W + iw] : 0.0;
        });
  return out;
}

Ref col2im_ref(const Ref& cols, int64_t H, int64_t W, const Win& w) {
  int64_t N = cols.shape[0], K = w.kh * w.kw, C = cols.shape[1] / K, OH = w.oh(H), OW = w.ow(W);
  Ref out{std::vector<double>(static_cast<size_t>(N * C * H * W)), {N, C, H, W}};
  for (int64_t p = 0; p < N * C; ++p)
    for (int64_t oh = 0; oh < OH; ++oh)
      for (int64_t ow = 0; ow < OW; ++ow)
        taps(w, H, W, oh, ow, [&](int64_t ki, int64_t kj, int64_t ih, int64_t iw, bool in) {
          int64_t row = p * K + ki * w.kw + kj;
          if (in) out.v[(p * H + ih) * W + iw] += cols.v[(row * OH + oh) * OW + ow];
        });
  return out;
}

Ref squeeze0(Ref r) {
  r.shape.erase(r.shape.begin());
  return r;
}
Ref unsqueeze0(Ref r) {
  r.shape.insert(r.shape.begin(), 1);
  return r;
}

}  // namespace

std::vector<OpRow> window_rows() {
  return {
      {"im2col", [](DType dt) {
         auto sample = [](std::string label, Tensor x, Win w) {
           return Sample{label, {x},
                         [w](const Inputs& in) {
                           return im2col(in[0], {w.kh, w.kw}, {w.sh, w.sw}, {w.ph, w.pw}, {w.dh, w.dw});
                         },
                         [w](const std::vector<Ref>& r) { return im2col_ref(r[0], w); }};
         };
         return std::vector<Sample>{
             sample("3x3 padded", input({2, 2, 5, 5}, dt, -1, 1), {3, 3, 1, 1, 1, 1}),
             sample("2x3, stride 2, dilation", input({1, 1, 6, 7}, dt, -1, 1, 2), {2, 3, 2, 2, 1, 0, 1, 2}),
             sample("non-contiguous", noncontig({1, 2, 4, 3}, dt, -1, 1, 3), {2, 2, 1, 1})};
       }},
      {"col2im", [](DType dt) {
         auto sample = [](std::string label, Tensor cols, int64_t H, int64_t W, Win w) {
           return Sample{label, {cols},
                         [=](const Inputs& in) {
                           return col2im(in[0], {H, W}, {w.kh, w.kw}, {w.sh, w.sw}, {w.ph, w.pw},
                                         {w.dh, w.dw});
                         },
                         [=](const std::vector<Ref>& r) { return col2im_ref(r[0], H, W, w); }};
         };
         return std::vector<Sample>{
             sample("overlapping 2x2", input({2, 8, 12}, dt, -1, 1), 4, 5, {2, 2}),
             sample("stride 2, padded", input({1, 9, 9}, dt, -1, 1, 2), 5, 5, {3, 3, 2, 2, 1, 1}),
             sample("dilated", input({1, 4, 4}, dt, -1, 1, 3), 4, 4, {2, 2, 1, 1, 0, 0, 2, 2})};
       }},
      {"conv2d", [](DType dt) {
         auto sample = [](std::string label, Inputs in, Win w, int64_t groups) {
           return Sample{label, in,
                         [w, groups](const Inputs& in) {
                           return conv2d(in[0], in[1], in.size() > 2 ? in[2] : Tensor(), {w.sh, w.sw},
                                         {w.ph, w.pw}, {w.dh, w.dw}, groups);
                         },
                         [w, groups](const std::vector<Ref>& r) {
                           bool one = r[0].shape.size() == 3;
                           Ref x = one ? unsqueeze0(r[0]) : r[0];
                           Ref out = conv_ref(x, r[1], r.size() > 2 ? &r[2] : nullptr, w, groups);
                           return one ? squeeze0(out) : out;
                         }};
         };
         return std::vector<Sample>{
             sample("3x3 padded", {input({2, 3, 5, 5}, dt, -1, 1), input({4, 3, 3, 3}, dt, -1, 1, 2)},
                    {3, 3, 1, 1, 1, 1}, 1),
             sample("stride 2 with bias",
                    {input({1, 2, 6, 5}, dt, -1, 1, 3), input({3, 2, 3, 2}, dt, -1, 1, 4), input({3}, dt, -1, 1, 5)},
                    {3, 2, 2, 2}, 1),
             sample("groups and dilation", {input({1, 4, 6, 5}, dt, -1, 1, 6), input({6, 2, 2, 2}, dt, -1, 1, 7)},
                    {2, 2, 1, 1, 0, 1, 2, 1}, 2),
             sample("1x1 pointwise", {input({2, 3, 2, 3}, dt, -1, 1, 8), input({2, 3, 1, 1}, dt, -1, 1, 9)},
                    {1, 1}, 1),
             sample("one image (3-D), non-contiguous",
                    {noncontig({2, 4, 3}, dt, -1, 1, 10), input({2, 2, 2, 2}, dt, -1, 1, 11)}, {2, 2}, 1),
             // 256 positions a sample: the per-sample weight gradient (Note [Convolution layout])
             sample("16x16 images, per-sample weight gradient",
                    {input({2, 1, 16, 16}, dt, -1, 1, 12), input({2, 1, 3, 3}, dt, -1, 1, 13),
                     input({2}, dt, -1, 1, 14)},
                    {3, 3, 1, 1, 1, 1}, 1)};
       }},
      {"max_pool2d", [](DType dt) {
         auto sample = [](std::string label, Tensor x, Win w) {
           return Sample{label, {x},
                         [w](const Inputs& in) {
                           return max_pool2d(in[0], {w.kh, w.kw}, Size2{w.sh, w.sw}, {w.ph, w.pw},
                                             {w.dh, w.dw});
                         },
                         [w](const std::vector<Ref>& r) { return pool_ref(r[0], w, true); }};
         };
         return std::vector<Sample>{
             sample("2x2", input({2, 2, 6, 6}, dt, -1, 1), {2, 2, 2, 2}),
             sample("2x2, rows of 18 outputs (vector steps and a tail)", input({1, 2, 4, 37}, dt, -1, 1, 4),
                    {2, 2, 2, 2}),
             sample("3x3 stride 2 padded", input({1, 2, 7, 6}, dt, -1, 1, 2), {3, 3, 2, 2, 1, 1}),
             sample("dilated, non-contiguous", noncontig({1, 1, 6, 5}, dt, -1, 1, 3), {2, 2, 1, 1, 0, 0, 2, 2})};
       }},
      {"avg_pool2d", [](DType dt) {
         auto sample = [](std::string label, Tensor x, Win w) {
           return Sample{label, {x},
                         [w](const Inputs& in) {
                           return avg_pool2d(in[0], {w.kh, w.kw}, Size2{w.sh, w.sw}, {w.ph, w.pw});
                         },
                         [w](const std::vector<Ref>& r) { return pool_ref(r[0], w, false); }};
         };
         return std::vector<Sample>{
             sample("2x2", input({2, 2, 4, 6}, dt, -1, 1), {2, 2, 2, 2}),
             sample("3x3 stride 2 padded", input({1, 2, 7, 6}, dt, -1, 1, 2), {3, 3, 2, 2, 1, 1}),
             sample("overlapping 2x3", noncontig({1, 1, 5, 5}, dt, -1, 1, 3), {2, 3, 1, 1})};
       }},
  };
}

}  // namespace tgtest
