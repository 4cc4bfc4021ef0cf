import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

pytestmark = pytest.mark.kafka


async def test_broker_round_trip(kafka_bootstrap, kafka_idempotence):
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=kafka_idempotence)
    await producer.start()
    try:
        await producer.send_and_wait("smoke", b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer("smoke", bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        msg = await consumer.getone()
        assert msg.value == b"hello"
    finally:
        await consumer.stop()
