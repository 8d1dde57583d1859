// Every figure opens full size when tapped or clicked: on a phone a multi-panel figure shrinks to the width of
// the screen, and the image file, opened on its own, can be zoomed. Images already inside a link are left alone.
document.addEventListener("DOMContentLoaded", () => {
  for (const img of document.querySelectorAll("figure img, .cell_output img")) {
    if (img.closest("a") || img.src.startsWith("data:")) continue;
    const link = document.createElement("a");
    link.href = img.getAttribute("src");
    link.className = "full-size";
    link.title = "Open the figure full size";
    img.replaceWith(link);
    link.appendChild(img);
  }
});
