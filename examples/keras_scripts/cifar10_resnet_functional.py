"""A CIFAR-10 ResNet in the keras.io style: functional API, residual blocks,
augmentation layers in the model, L2 weight decay, a learning-rate schedule,
checkpoints and ReduceLROnPlateau.  Only the import differs from Keras."""
import os

import numpy as np
import pynn as keras
from pynn import layers

EPOCHS = int(os.environ.get("EPOCHS", "30"))  # the test runs a short epoch
CKPT = os.environ.get("CKPT_DIR", ".")

(x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
x_train = x_train.astype("float32") / 255.0
x_test = x_test.astype("float32") / 255.0
x_mean = np.mean(x_train, axis=0)
x_train -= x_mean
x_test -= x_mean
y_train = keras.utils.to_categorical(y_train, 10)
y_test = keras.utils.to_categorical(y_test, 10)


def resnet_layer(inputs, num_filters=16, kernel_size=3, strides=1, activation="relu",
                 batch_normalization=True):
    conv = layers.Conv2D(num_filters, kernel_size=kernel_size, strides=strides, padding="same",
                         kernel_initializer="he_normal",
                         kernel_regularizer=keras.regularizers.l2(1e-4))
    x = conv(inputs)
    if batch_normalization:
        x = layers.BatchNormalization()(x)
    if activation is not None:
        x = layers.Activation(activation)(x)
    return x


def resnet_v1(input_shape, depth, num_classes=10):
    num_filters = 16
    num_res_blocks = int((depth - 2) / 6)
    inputs = keras.Input(shape=input_shape)
    x = layers.RandomFlip("horizontal")(inputs)
    x = layers.RandomTranslation(0.1, 0.1)(x)
    x = resnet_layer(x)
    for stack in range(3):
        for res_block in range(num_res_blocks):
            strides = 2 if stack > 0 and res_block == 0 else 1
            y = resnet_layer(x, num_filters=num_filters, strides=strides)
            y = resnet_layer(y, num_filters=num_filters, activation=None)
            if stack > 0 and res_block == 0:
                x = resnet_layer(x, num_filters=num_filters, kernel_size=1, strides=strides,
                                 activation=None, batch_normalization=False)
            x = keras.layers.add([x, y])
            x = layers.Activation("relu")(x)
        num_filters *= 2
    x = layers.AveragePooling2D(pool_size=8)(x)
    y = layers.Flatten()(x)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_initializer="he_normal")(y)
    return keras.Model(inputs=inputs, outputs=outputs)


def lr_schedule(epoch):
    lr = 1e-3
    if epoch > 180:
        lr *= 0.5e-3
    elif epoch > 160:
        lr *= 1e-3
    elif epoch > 120:
        lr *= 1e-2
    elif epoch > 80:
        lr *= 1e-1
    return lr


model = resnet_v1(input_shape=x_train.shape[1:], depth=8)
model.compile(loss="categorical_crossentropy",
              optimizer=keras.optimizers.Adam(learning_rate=lr_schedule(0)),
              metrics=["accuracy"])
model.summary()
callbacks = [
    keras.callbacks.ModelCheckpoint(filepath=os.path.join(CKPT, "cifar10_resnet.keras"),
                                    monitor="val_accuracy", verbose=1, save_best_only=True),
    keras.callbacks.LearningRateScheduler(lr_schedule),
    keras.callbacks.ReduceLROnPlateau(factor=np.sqrt(0.1), cooldown=0, patience=5,
                                      min_lr=0.5e-6),
]
model.fit(x_train, y_train, batch_size=32, epochs=EPOCHS, validation_data=(x_test, y_test),
          shuffle=True, callbacks=callbacks)
scores = model.evaluate(x_test, y_test, verbose=1)
print("Test loss:", scores[0])
print("Test accuracy:", scores[1])
