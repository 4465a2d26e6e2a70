# Sourced by the Fashion-MNIST benchmark scripts (run from the checkout's root): their `vssm train` runs import this
# checkout, read the data copied to build/ and keep the inductor cache there, which a warm device machine keeps
# between commands.
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-.}
export VSSM_FASHION_MNIST_DIR=${VSSM_FASHION_MNIST_DIR:-$PWD/build/fashion-mnist}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/build/inductor}
