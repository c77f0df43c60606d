//! The foundation works end to end: the harness's real broker accepts a topic,
//! records produced with acks=all come back from a consumer, and the
//! three-broker mode really has three brokers.

use crate::common;

use std::time::Duration;

use orderlog::kafka::{KafkaSettings, TopicSpec, ensure_topics};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::test]
async fn records_produced_to_the_real_broker_are_consumed_back() {
    let settings = KafkaSettings::new(common::brokers());
    let topic = common::unique("smoke");
    ensure_topics(&settings, &[TopicSpec::events(&topic, 3, 1)])
        .await
        .unwrap();

    let producer: FutureProducer = settings
        .reliable_producer_config(Duration::from_secs(10))
        .create()
        .unwrap();
    let mut sent = Vec::new();
    for i in 0..50u32 {
        let key = format!("order-{}", i % 7);
        let value = format!("event-{i}");
        producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        sent.push((key, value));
    }

    let consumer: StreamConsumer = settings
        .client_config()
        .set("group.id", common::unique("smoke-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("records arrive within 30 s")
            .unwrap();
        got.push((
            String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
            String::from_utf8(m.payload().unwrap().to_vec()).unwrap(),
        ));
    }
    got.sort();
    sent.sort();
    assert_eq!(got, sent);
}

#[test]
fn three_broker_mode_starts_three_brokers() {
    // The shared three-broker cluster of the broker-fault tests (started by
    // ops/test.sh, or by the harness on first use).
    let (_dir, bootstrap) = common::cluster3();
    assert_eq!(
        bootstrap.split(',').count(),
        3,
        "bootstrap list: {bootstrap}"
    );
    let consumer: rdkafka::consumer::BaseConsumer = KafkaSettings::new(&bootstrap)
        .client_config()
        .create()
        .unwrap();
    // Brokers register with the controller quorum one by one; give them a moment.
    let mut ids = Vec::new();
    for _ in 0..60 {
        let md = consumer
            .fetch_metadata(None, Duration::from_secs(5))
            .unwrap();
        ids = md.brokers().iter().map(|b| b.id()).collect::<Vec<_>>();
        if ids.len() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3]);
}
