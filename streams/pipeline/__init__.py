"""The worker: faust app, the Kafka input reader, the sequencer, the output producer."""
