from .fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, read_fashion_mnist
