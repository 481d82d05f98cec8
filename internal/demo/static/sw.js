// Service worker of the demo: shows a notification for each push. A push
// carries no message content, only that something is waiting.
self.addEventListener('push', (event) => {
  let data = {};
  try { data = event.data ? event.data.json() : {}; } catch { /* not JSON */ }
  event.waitUntil(self.registration.showNotification('New message', {
    body: data.type ? `a ${data.type} message is waiting` : 'a message is waiting',
    tag: 'routingservice-demo',
  }));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  event.waitUntil(self.clients.matchAll({ type: 'window' }).then((list) => {
    if (list.length > 0) return list[0].focus();
    return self.clients.openWindow('./');
  }));
});
