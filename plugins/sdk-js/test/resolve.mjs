export async function resolve(specifier, context, next) {
  if (specifier.startsWith("headstream:plugin/host@")) {
    return { url: new URL("./host-absent.mjs", import.meta.url).href, shortCircuit: true };
  }
  return next(specifier, context);
}
