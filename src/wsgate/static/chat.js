// The chat example: rooms (topics chat.rooms.<name>) and who is in them.
//
// Presence is kept by the clients themselves: entering a room publishes
// {type: "join", user}, every member answers a join of someone else with
// {type: "here", user}, and leaving publishes {type: "leave", user}. Each page
// shows the set it has seen. The token needs the grants
// subscribe chat.rooms.* and publish chat.rooms.* (see examples/chat/README.md).
import { connect } from "/client.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const ROOM_NAME = /^[A-Za-z0-9_-]{1,64}$/;

let client = null;
let room = null; // {name, topic, subscription}
const people = new Set();

function log(text, user = null) {
  const item = document.createElement("li");
  if (user === null) {
    item.className = "system";
    item.textContent = text;
  } else {
    const who = document.createElement("span");
    who.className = "user";
    who.textContent = user;
    item.append(who, document.createTextNode(text));
  }
  $("log").append(item);
  $("log").scrollTop = $("log").scrollHeight;
}

function showPeople() {
  $("people").replaceChildren(
    ...[...people].sort().map((user) => {
      const item = document.createElement("li");
      item.textContent = user;
      return item;
    }),
  );
}

function onRoomMessage(topic, data) {
  if (!room || topic !== room.topic || !data || typeof data.user !== "string") return;
  const { type, user } = data;
  if (type === "text" && typeof data.text === "string") {
    log(data.text, user);
  } else if (type === "join" || type === "here") {
    if (!people.has(user) && type === "join") log(`${user} joined`);
    people.add(user);
    if (type === "join" && user !== client.user) {
      client.publish(room.topic, { type: "here", user: client.user }).catch(console.warn);
    }
  } else if (type === "leave") {
    if (people.delete(user)) log(`${user} left`);
  }
  showPeople();
}

async function leave() {
  if (!room) return;
  const left = room;
  room = null;
  people.clear();
  showPeople();
  try {
    await client.publish(left.topic, { type: "leave", user: client.user });
    await left.subscription.unsubscribe();
  } catch (error) {
    console.warn("leaving", left.name, error);
  }
}

async function enter(name) {
  if (!ROOM_NAME.test(name)) {
    log("a room name is 1-64 letters, digits, _ or -");
    return;
  }
  await leave();
  const topic = `chat.rooms.${name}`;
  try {
    const subscription = await client.subscribe(topic, onRoomMessage);
    room = { name, topic, subscription };
    people.add(client.user);
    showPeople();
    $("room-name").textContent = name;
    log(`you entered ${name}`);
    await client.publish(topic, { type: "join", user: client.user });
  } catch (error) {
    log(`cannot enter ${name}: ${error.message}`);
  }
}

async function main() {
  const token = params.get("token");
  if (!token) {
    log("add ?token=... to this page's URL (see examples/chat/README.md)");
    return;
  }
  try {
    client = await connect(params.get("ws") || "/ws", {
      token,
      onState: (state) => {
        $("state").textContent = state;
        // Whoever joined while we were away did not hear from us: announce again.
        if (state === "connected" && room) {
          client.publish(room.topic, { type: "join", user: client.user }).catch(console.warn);
        }
      },
    });
  } catch (error) {
    $("state").textContent = "refused";
    log(`cannot connect: ${error.message}`);
    return;
  }
  window.chatClient = client; // for the console (and the tests)
  $("me").textContent = `as ${client.user}`;
  $("text").disabled = $("send").disabled = false;
  $("room-form").addEventListener("submit", (event) => {
    event.preventDefault();
    enter($("room").value.trim());
  });
  $("say-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value.trim();
    if (!text || !room) return;
    $("text").value = "";
    client.publish(room.topic, { type: "text", user: client.user, text }).catch((error) => {
      log(`not sent: ${error.message}`);
    });
  });
  window.addEventListener("pagehide", () => {
    if (room) client.publish(room.topic, { type: "leave", user: client.user }).catch(() => {});
  });
  await enter(params.get("room") || $("room").value);
}

main();
