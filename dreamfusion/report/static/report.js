// report.html: the preview slider shows one step at a time (all previews are in the page).
for (const root of document.querySelectorAll(".previews")) {
  const input = root.querySelector("input"), out = root.querySelector("output");
  const figures = root.querySelectorAll("figure");
  if (!input) continue;
  input.addEventListener("input", () => {
    figures.forEach((f, i) => { f.hidden = i !== Number(input.value); });
    out.textContent = figures[Number(input.value)].dataset.label;
  });
}
