"""MNIST MLP in the Keras 3 style (keras.io "simple MLP" pattern).
Only the import differs from the Keras script: `import pynn as keras`."""
import os

import numpy as np
import pynn as keras
from pynn import layers

EPOCHS = int(os.environ.get("EPOCHS", "10"))  # the test runs a short epoch

(x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
x_train = x_train.reshape(-1, 784).astype("float32") / 255
x_test = x_test.reshape(-1, 784).astype("float32") / 255

inputs = keras.Input(shape=(784,), name="digits")
x = layers.Dense(64, activation="relu", name="dense_1")(inputs)
x = layers.Dense(64, activation="relu", name="dense_2")(x)
outputs = layers.Dense(10, activation="softmax", name="predictions")(x)
model = keras.Model(inputs=inputs, outputs=outputs)
model.summary()

model.compile(
    optimizer=keras.optimizers.RMSprop(learning_rate=1e-3),
    loss=keras.losses.SparseCategoricalCrossentropy(),
    metrics=[keras.metrics.SparseCategoricalAccuracy()],
)
history = model.fit(x_train, y_train, batch_size=64, epochs=EPOCHS,
                    validation_data=(x_test[:500], y_test[:500]))
print("history keys:", sorted(history.history))
results = model.evaluate(x_test, y_test, batch_size=128, return_dict=True)
print("test:", results)
predictions = model.predict(x_test[:3])
print("predictions shape:", predictions.shape)
assert predictions.shape == (3, 10)
assert np.allclose(predictions.sum(axis=1), 1, atol=1e-5)
