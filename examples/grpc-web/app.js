// The example's calls, rendered as they complete. grpc.testing messages:
//   SimpleRequest {payload = 3; response_status = 7}, Payload {body = 2},
//   EchoStatus {code = 1; message = 2},
//   SimpleResponse {payload = 1; server_id = 4},
//   StreamingOutputCallRequest {response_parameters = 2},
//   ResponseParameters {size = 1}, StreamingOutputCallResponse {payload = 1}.
"use strict";

const base = new URLSearchParams(location.search).get("meshd") || location.origin;
document.getElementById("target").textContent = base;
const svc = "/grpc.testing.TestService/";
const enc = new TextEncoder(), dec = new TextDecoder();
const show = (id, text) => { document.getElementById(id).textContent = text; };

async function unary() {
  const req = GrpcWeb.field(3, GrpcWeb.field(2, [...enc.encode("hello from the browser")]));
  let echoed = "", server = "";
  const st = await GrpcWeb.call(base, svc + "UnaryCall", new Uint8Array(req), (msg) => {
    const f = GrpcWeb.fields(msg);
    echoed = dec.decode(GrpcWeb.fields(f[1][0])[2][0]);
    server = f[4] ? dec.decode(f[4][0]) : "";
  });
  show("unary", `status ${st.code}: echoed "${echoed}" by ${server}`);
}

async function stream() {
  const params = [1, 2, 3, 4].flatMap((n) => GrpcWeb.field(2, GrpcWeb.int32Field(1, n)));
  const list = document.getElementById("stream");
  const st = await GrpcWeb.call(base, svc + "StreamingOutputCall", new Uint8Array(params), (msg) => {
    const body = GrpcWeb.fields(GrpcWeb.fields(msg)[1][0])[2];
    const li = document.createElement("li");
    li.textContent = `message of ${body ? body[0].length : 0} bytes`;
    list.appendChild(li);
  });
  show("stream-status", `status ${st.code}: ${list.children.length} messages`);
}

async function failing() {
  const status = [...GrpcWeb.int32Field(1, 5), ...GrpcWeb.field(2, [...enc.encode("not here")])];
  const st = await GrpcWeb.call(base, svc + "UnaryCall", new Uint8Array(GrpcWeb.field(7, status)), () => {});
  show("error", `status ${st.code}: ${st.message}`);
}

(async () => {
  for (const [id, f] of [["unary", unary], ["stream-status", stream], ["error", failing]]) {
    try { await f(); } catch (e) { show(id, "failed: " + e); }
  }
  const done = document.getElementById("done");
  done.textContent = "done";
  done.hidden = false;
})();
