const absent = () => {
  throw new Error("the host functions exist only inside a component");
};
export const log = absent;
export const embed = absent;
