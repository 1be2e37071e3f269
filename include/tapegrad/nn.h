// tg::nn: modules, layers, functional forms, losses and initializers.
#pragma once

#include "tapegrad/nn/functional.h"
#include "tapegrad/nn/init.h"
#include "tapegrad/nn/layers.h"
#include "tapegrad/nn/module.h"
