// Validates Kubernetes objects (a multi-document YAML stream on stdin, as
// `kubectl kustomize` renders it) against the Kubernetes OpenAPI schemas
// that the kubernetes-models packages bundle, and the prometheus-operator
// CRDs' schemas for ServiceMonitor and PodMonitor.
//
//   kubectl kustomize deploy/kubernetes/overlays/ha | node validate.mjs
//
// Prints one line per object; exits 1 if any object is invalid or of a kind
// it has no schema for (nothing passes unchecked), 2 on unreadable input.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

// apiVersion -> the package folder its models live in.
function modulePath(apiVersion, kind) {
  if (apiVersion.startsWith("monitoring.coreos.com/")) {
    return `@kubernetes-models/prometheus-operator/${apiVersion}/${kind}`;
  }
  return `kubernetes-models/${apiVersion}/${kind}`;
}

async function validate(object) {
  const { apiVersion, kind } = object ?? {};
  const name = `${kind}/${object?.metadata?.name ?? "(no name)"}`;
  if (typeof apiVersion !== "string" || typeof kind !== "string") {
    return `${name}: apiVersion and kind must be strings`;
  }
  let module;
  try {
    module = await import(modulePath(apiVersion, kind));
  } catch {
    return `${name}: no schema for ${apiVersion} ${kind}`;
  }
  const Model = module[kind];
  try {
    new Model(object).validate();
  } catch (e) {
    return `${name}: ${e.message}`;
  }
  return null;
}

let text;
try {
  text = readFileSync(0, "utf8");
} catch (e) {
  console.error(`validate: cannot read stdin: ${e.message}`);
  process.exit(2);
}
const docs = parseAllDocuments(text);
let failed = 0;
let checked = 0;
for (const doc of docs) {
  if (doc.errors.length > 0) {
    console.error(`validate: YAML: ${doc.errors[0].message}`);
    process.exit(2);
  }
  const object = doc.toJS();
  if (object === null || object === undefined) continue;
  ++checked;
  const error = await validate(object);
  if (error === null) {
    console.log(`ok ${object.kind}/${object.metadata.name}`);
  } else {
    ++failed;
    console.log(`INVALID ${error}`);
  }
}
console.log(`${checked} objects, ${failed} invalid`);
process.exit(failed > 0 || checked === 0 ? 1 : 0);
