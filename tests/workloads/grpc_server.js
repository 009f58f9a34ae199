// A gRPC server (Node.js @grpc/grpc-js, raw method definitions: no .proto, no generated code)
// for the gRPC tests: the same service as grpc_server.py.
//
// usage: node grpc_server.js PORT   (with @grpc/grpc-js on NODE_PATH)
// Serves `demo.Greeter` in plaintext HTTP/2 (h2c) on 127.0.0.1:PORT. Requests and replies are
// raw bytes (Buffers, no protobuf). The request says how the call ends: `ok`, `not_found` or
// `internal`, optionally followed by `:MS`, a delay before answering (so that concurrent calls
// overlap).
//   SayHello      unary: one reply, or the status asked for
//   ListFeatures  server streaming: three replies, then OK or the status asked for (in the
//                 trailers, after the messages)
// Runs until killed.
const grpc = require("@grpc/grpc-js");

const port = Number(process.argv[2]);
const STATUSES = { not_found: grpc.status.NOT_FOUND, internal: grpc.status.INTERNAL };
const bytes = (b) => b;

// Calls `then(outcome)` once the request's delay, if any, has passed.
function parse(request, then) {
  const [outcome, delay] = request.toString().split(":");
  if (delay) setTimeout(() => then(outcome), Number(delay));
  else then(outcome);
}

function method(name, responseStream) {
  return {
    path: `/demo.Greeter/${name}`,
    requestStream: false,
    responseStream,
    requestSerialize: bytes,
    requestDeserialize: bytes,
    responseSerialize: bytes,
    responseDeserialize: bytes,
  };
}

const server = new grpc.Server();
server.addService(
  { SayHello: method("SayHello", false), ListFeatures: method("ListFeatures", true) },
  {
    SayHello(call, callback) {
      parse(call.request, (outcome) => {
        if (outcome in STATUSES) {
          callback({ code: STATUSES[outcome], details: `asked for ${outcome}` });
        } else {
          callback(null, Buffer.from("hello"));
        }
      });
    },
    ListFeatures(call) {
      parse(call.request, (outcome) => {
        for (let i = 0; i < 3; i++) call.write(Buffer.from(`feature ${i}`));
        if (outcome in STATUSES) {
          call.emit("error", { code: STATUSES[outcome], details: `asked for ${outcome}` });
        } else {
          call.end();
        }
      });
    },
  },
);
server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err) => {
  if (err) {
    console.error(err);
    process.exit(1);
  }
});
