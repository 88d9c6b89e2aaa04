"""The TensorFlow "basic classification" tutorial (Fashion-MNIST), with
`tf.keras` written `keras` and `import pynn as keras`."""
import os

import numpy as np
import pynn as keras

EPOCHS = int(os.environ.get("EPOCHS", "10"))  # the test runs a short epoch

fashion_mnist = keras.datasets.fashion_mnist
(train_images, train_labels), (test_images, test_labels) = fashion_mnist.load_data()
class_names = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
               'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot']
train_images = train_images / 255.0
test_images = test_images / 255.0

model = keras.Sequential([
    keras.layers.Flatten(input_shape=(28, 28)),
    keras.layers.Dense(128, activation='relu'),
    keras.layers.Dense(10)
])
model.compile(optimizer='adam',
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=['accuracy'])
model.fit(train_images, train_labels, epochs=EPOCHS)
test_loss, test_acc = model.evaluate(test_images, test_labels, verbose=2)
print('\nTest accuracy:', test_acc)

probability_model = keras.Sequential([model, keras.layers.Softmax()])
predictions = probability_model.predict(test_images)
print(predictions[0], class_names[np.argmax(predictions[0])])
img = np.expand_dims(test_images[1], 0)
predictions_single = probability_model.predict(img)
assert predictions_single.shape == (1, 10)
