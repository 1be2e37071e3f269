// The progress bar and running metrics for training loops.
#include <unistd.h>

#include <cstdio>

#include "core/check.h"
#include "tapegrad/autograd.h"
#include "tapegrad/data.h"
#include "tapegrad/ops.h"

namespace tg::data {

namespace {
std::string clock_str(double seconds) {
  if (!(seconds >= 0) || seconds > 359999) return "--:--";
  int s = static_cast<int>(seconds + 0.5);
  return s >= 3600 ? fmt::format("{}:{:02d}:{:02d}", s / 3600, s / 60 % 60, s % 60)
                   : fmt::format("{:02d}:{:02d}", s / 60, s % 60);
}
}  // namespace

ProgressBar::ProgressBar(int64_t total, std::string description, double plain_every)
    : total_(total), description_(std::move(description)), plain_every_(plain_every),
      tty_(::isatty(STDOUT_FILENO) == 1), start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

ProgressBar::~ProgressBar() {
  if (!closed_) close();
}

void ProgressBar::update(int64_t n) {
  done_ += n;
  auto now = std::chrono::steady_clock::now();
  double since = std::chrono::duration<double>(now - last_draw_).count();
  if ((tty_ && since >= 0.1) || (!tty_ && since >= plain_every_)) draw(false);
}

void ProgressBar::set_postfix(std::string postfix) { postfix_ = std::move(postfix); }

void ProgressBar::close() {
  if (closed_) return;
  closed_ = true;
  draw(true);
}

void ProgressBar::draw(bool final) {
  last_draw_ = std::chrono::steady_clock::now();
  double elapsed = std::chrono::duration<double>(last_draw_ - start_).count();
  double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0;
  double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : -1;
  std::string head = description_.empty() ? "" : description_ + ": ";
  std::string counts = total_ > 0 ? fmt::format("{}/{}", done_, total_) : fmt::format("{}", done_);
  std::string timing = fmt::format("[{}<{}, {:.1f} it/s]", clock_str(elapsed), clock_str(eta), rate);
  std::string tail = postfix_.empty() ? "" : " " + postfix_;
  if (tty_) {
    int pct = total_ > 0 ? static_cast<int>(100 * done_ / total_) : 0;
    int width = 30, fill = total_ > 0 ? static_cast<int>(width * done_ / total_) : 0;
    std::string bar = std::string(static_cast<size_t>(std::clamp(fill, 0, width)), '#') +
                      std::string(static_cast<size_t>(width - std::clamp(fill, 0, width)), ' ');
    std::printf("\r%s%3d%%|%s| %s %s%s\033[K", head.c_str(), pct, bar.c_str(), counts.c_str(),
                timing.c_str(), tail.c_str());
    if (final) std::printf("\n");
  } else {
    std::printf("%s%s %s%s\n", head.c_str(), counts.c_str(), timing.c_str(), tail.c_str());
  }
  std::fflush(stdout);
}

int64_t count_correct(const Tensor& logits, const Tensor& targets) {
  NoGradGuard no_grad;
  TG_CHECK(logits.dim() == 2 && targets.dim() == 1 && logits.size(0) == targets.size(0),
           "count_correct: expected logits (N, C) and targets (N), got {} and {}", logits.shape(),
           targets.shape());
  return (logits.argmax(1) == targets.to(kI64)).to(kI64).sum().item<int64_t>();
}

void Metrics::add(const Tensor& loss, const Tensor& logits, const Tensor& targets) {
  int64_t n = targets.defined() ? targets.size(0) : 1;
  loss_sum_ += loss.detach().to(kF64).item<double>() * static_cast<double>(n);
  count_ += n;
  if (logits.defined() && targets.defined()) {
    correct_ += count_correct(logits, targets);
    seen_ += n;
  }
}

std::string Metrics::str() const {
  std::string s = fmt::format("loss {:.4f}", loss());
  if (seen_) s += fmt::format("  acc {:.2f}%", 100 * accuracy());
  return s;
}

}  // namespace tg::data
