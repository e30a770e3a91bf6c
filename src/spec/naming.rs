//! Names on the wire: topics, event types, consumer groups and queues. Publishers and
//! subscribers of different services must agree on them, so they are decided here once
//! and the blueprints only read them from the model.

use crate::inflect::Names;

/// `<system>.<context>.<aggregate>.v1`, kebab case: a Kafka topic, or a logical topic on
/// SQS. Every event of one aggregate goes to its one topic (the type is a header), keyed by
/// the aggregate id: Kafka keeps order only within a partition of a topic, so this is
/// what keeps one aggregate's events in version order.
pub fn aggregate_topic(system: &Names, context: &Names, aggregate: &Names) -> String {
    format!("{}.{}.{}.v1", system.kebab, context.kebab, aggregate.kebab)
}

/// The fully qualified protobuf name of an event message, sent as `event_type`.
pub fn event_type(system: &Names, context: &Names, event: &Names) -> String {
    format!("{}.{}.v1.{}", system.snake, context.snake, event.pascal)
}

/// The consumer group of a consuming service.
pub fn consumer_group(system: &Names, context: &Names) -> String {
    format!("{}.{}", system.kebab, context.kebab)
}

/// Where the messages a service cannot apply go.
pub fn dead_letter_topic(system: &Names, context: &Names) -> String {
    format!("{}.{}.dead-letter.v1", system.kebab, context.kebab)
}

/// The SQS queue of a consuming service: FIFO, so one aggregate's events (one message
/// group) arrive in order. SQS names allow no dots but the `.fifo` suffix.
pub fn queue(system: &Names, context: &Names) -> String {
    format!("{}-{}.fifo", system.kebab, context.kebab)
}

/// The SQS dead-letter queue of a consuming service (FIFO too, as SQS requires).
pub fn dead_letter_queue(system: &Names, context: &Names) -> String {
    format!("{}-{}-dead-letter.fifo", system.kebab, context.kebab)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conventions_documented_in_the_readme() {
        let (shop, items, created) = (
            Names::new("shop"),
            Names::new("order-items"),
            Names::new("OrderItemCreated"),
        );
        assert_eq!(
            aggregate_topic(&shop, &items, &Names::new("OrderItem")),
            "shop.order-items.order-item.v1"
        );
        assert_eq!(
            event_type(&shop, &items, &created),
            "shop.order_items.v1.OrderItemCreated"
        );
        assert_eq!(consumer_group(&shop, &items), "shop.order-items");
        assert_eq!(
            dead_letter_topic(&shop, &items),
            "shop.order-items.dead-letter.v1"
        );
        assert_eq!(queue(&shop, &items), "shop-order-items.fifo");
        assert_eq!(
            dead_letter_queue(&shop, &items),
            "shop-order-items-dead-letter.fifo"
        );
    }
}
