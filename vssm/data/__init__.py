from .build import FASHION_MNIST_MEAN, FASHION_MNIST_STD, DataInfo, build_eval_loader, build_train_loader, data_info
from .fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, read_fashion_mnist
from .imagefolder import DataError
from .tensor_loader import TensorAugment, TensorEvalLoader, TensorTrainLoader
