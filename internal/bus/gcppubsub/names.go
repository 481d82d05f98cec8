package gcppubsub

import (
	"fmt"
	"strings"
)

// Delivery topic names.
//
// Each realtime instance has a topic of its own, "<DeliveryTopic>.<instance>",
// and on it one subscription with the same id (topics and subscriptions are
// separate namespaces in Pub/Sub). The name is a function of the instance
// name alone and is injective: the prefix is fixed and an instance name is
// already made of characters Pub/Sub allows in an id (instanceName), so two
// instances never share a topic, and the janitor recovers the instance from
// the topic id by cutting the prefix. "." separates them, not "-": with the
// default names, "routing-delivery-<instance>" is the instance's
// subscription on the shared topic in the earlier layout, which must stay
// apart from the new one while both are read (Config.validate refuses
// prefixes that would make them meet). Pub/Sub ids are at most 255
// characters: an instance whose id would be longer is refused with an error
// that says so, never shortened (a shortened name could be another
// instance's).

// deliveryTopicPrefix starts the id of every instance's delivery topic.
func deliveryTopicPrefix(deliveryTopic string) string { return deliveryTopic + "." }

// DeliveryTopicID is the id of instance's own delivery topic, and of its
// subscription, for the base name deliveryTopic (Config.DeliveryTopic), or
// an error when instance cannot name one (characters, length).
func DeliveryTopicID(deliveryTopic, instance string) (string, error) {
	if !instanceName.MatchString(instance) {
		return "", fmt.Errorf("invalid instance name %q (1-200 of [A-Za-z0-9._~+-])", instance)
	}
	id := deliveryTopicPrefix(deliveryTopic) + instance
	if !validResourceID(id) {
		return "", fmt.Errorf("instance %q: its delivery topic id %q is not a valid Pub/Sub id (at most 255 characters: shorten the delivery topic or the instance id)",
			instance, id)
	}
	return id, nil
}

// instanceOfTopic returns the instance whose delivery topic has the id
// topicID, and whether topicID is such a topic.
func instanceOfTopic(deliveryTopic, topicID string) (string, bool) {
	instance, ok := strings.CutPrefix(topicID, deliveryTopicPrefix(deliveryTopic))
	if !ok || !instanceName.MatchString(instance) {
		return "", false
	}
	return instance, true
}

// idOf is the last element of a full resource name
// ("projects/p/topics/<id>" -> "<id>").
func idOf(name string) string {
	return name[strings.LastIndexByte(name, '/')+1:]
}
