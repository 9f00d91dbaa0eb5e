// main.cpp - Mobile-LeNet on a microcontroller: the seed's serial protocol over USB serial.
// Written by mobile-lenet, the same for every model. The protocol logic is the state machine in mobile_lenet_serial.c (the same
// code the host tests run); this file only moves bytes between it and Serial.
//
// Protocol (115200 baud): prints READY; reads exactly ML_IMAGE_BYTES raw bytes (an SxS image of the
// model's input size, 784 for the seed's 28x28; white digit on black);
// answers "PRED <digit> <seconds> <confidence>". After ML_TIMEOUT_MS without a byte, a partial image is
// dropped and READY is printed again.
#include <Arduino.h>

#include "mobile_lenet.h"
#include "mobile_lenet_serial.h"

static ml_serial_link serial_link;
static char reply[ML_REPLY_MAX];

static uint32_t clock_us(void) { return (uint32_t)micros(); }

void setup()
{
    Serial.begin(ML_BAUD_RATE);
    ml_serial_start(&serial_link, (uint32_t)millis());
    Serial.println("READY");
}

void loop()
{
    if (ml_serial_tick(&serial_link, (uint32_t)millis()) == ML_SERIAL_SEND_READY) Serial.println("READY");
    while (Serial.available() > 0) {
        const int received = Serial.read();
        if (received < 0) break;
        if (ml_serial_receive(&serial_link, (uint8_t)received, (uint32_t)millis()) == ML_SERIAL_IMAGE_COMPLETE) {
            ml_serial_classify(&serial_link, clock_us, reply);
            Serial.println(reply);
        }
    }
}
